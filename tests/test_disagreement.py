"""Where the nets disagree: regions, per class and the per-class gain, on label maps made by hand."""

import math

import numpy as np
import pytest
import torch

from cpcl_kit.teach import disagreement as dg

I = 255  # ignore


def t(rows):
    return torch.tensor([rows])


# A 4x5 truth map: a "7" blob (class 7) in the top-left, a "3" (class 3) on the right, one unknown pixel.
TRUTH = t([[7, 7, 0, 0, 3],
           [7, 7, 0, 0, 3],
           [0, 0, 0, 0, 3],
           [0, 0, 0, I, 0]])


def test_edge_mask_by_hand():
    want = t([[0, 1, 1, 1, 1],
              [1, 1, 1, 1, 1],
              [1, 1, 1, 1, 1],
              [0, 0, 1, 0, 1]]).bool()   # (3, 2) and (3, 4): next to the unknown pixel (3, 3)
    assert torch.equal(dg.edge_mask(TRUTH), want)
    # the unknown pixel is never an edge, but a void band marks a boundary: its neighbours are edges
    assert torch.equal(dg.edge_mask(t([[0, 0], [0, I]])), t([[1, 1], [1, 0]]).bool())
    # one class alone is all interior, up to the image border
    assert not dg.edge_mask(torch.zeros(1, 4, 4, dtype=torch.long), width=2).any()
    # a digit in a 1-px void outline, as the scenes draw it: the pixels each side of the band are edges
    scene = t([[0, 0, 0, 0, 0, 0, 0],
               [0, I, I, I, I, I, 0],
               [0, I, 5, 5, 5, I, 0],
               [0, I, 5, 5, 5, I, 0],
               [0, I, I, I, I, I, 0],
               [0, 0, 0, 0, 0, 0, 0]])
    e = dg.edge_mask(scene)
    assert e[0, 2:4, 2:5].all() and e[0, 0].all() and not e[scene == I].any()
    # a wider band reaches further into a big blob; the centre of a 5x5 blob stays interior
    blob = torch.zeros(1, 7, 7, dtype=torch.long)
    blob[0, 1:6, 1:6] = 4
    assert dg.edge_mask(blob, width=1)[0, 3, 3].item() is False
    assert dg.edge_mask(blob, width=2)[0, 3, 3].item() is False  # rows 1..5 are all blob
    assert dg.edge_mask(blob, width=3)[0, 3, 3].item() is True
    with pytest.raises(ValueError, match="width"):
        dg.edge_mask(blob, width=0)


def test_regions_partition_the_known_pixels():
    m = dg.region_masks(TRUTH)
    known = TRUTH != I
    assert torch.equal(m["foreground"] | m["background"], known) and not (m["foreground"] & m["background"]).any()
    assert torch.equal(m["edge"] | m["interior"], known) and not (m["edge"] & m["interior"]).any()
    assert int(m["foreground"].sum()) == 7 and int(m["all"].sum()) == 19
    assert "foreground" not in dg.region_masks(TRUTH, background=None)


def test_where_they_disagree_by_hand():
    # net 1 and net 2 disagree on 4 pixels: two in the 7 (interior (0,0) and edge (1,1)), one on the
    # 3, one in the background; the union takes net 1 on two of them.
    y1 = TRUTH.clone()
    y2 = TRUTH.clone()
    y2[0, 0, 0] = 1          # 7 interior: net 1 right
    y1[0, 1, 1] = 1          # 7 edge: net 2 right
    y2[0, 0, 4] = 8          # 3 edge: net 1 right
    y1[0, 3, 0], y2[0, 3, 0] = 5, 6   # background, interior: neither right
    y1[0, 3, 3], y2[0, 3, 3] = 1, 2   # unknown truth: left out
    union = y2.clone()
    union[0, 0, 0] = y1[0, 0, 0]      # union takes net 1 (right)
    union[0, 3, 0] = y1[0, 3, 0]      # union takes net 1 (wrong: neither is right)
    tab = dg.where_they_disagree(y1, y2, union, TRUTH)
    assert list(tab.index) == list(dg.REGIONS)
    a = tab.loc["all"]
    assert a["pixels"] == 19 and a["disagree (%)"] == pytest.approx(100 * 4 / 19)
    assert a["union takes net 1 (%)"] == 50 and a["union right (%)"] == 50       # (0,0) right, (3,0) wrong...
    assert a["net 1 right (%)"] == 50 and a["net 2 right (%)"] == 25 and a["neither right (%)"] == 25
    fg, bg = tab.loc["foreground"], tab.loc["background"]
    assert fg["pixels"] == 7 and fg["disagree (%)"] == pytest.approx(100 * 3 / 7)
    assert fg["of all disagreement (%)"] == 75 and bg["of all disagreement (%)"] == 25
    # union on the three foreground disagreements: (0,0) net 1 = right, (1,1) net 2 = right, (0,4) net 2 = wrong
    assert fg["union right (%)"] == pytest.approx(200 / 3)
    edge, interior = tab.loc["edge"], tab.loc["interior"]
    assert edge["of all disagreement (%)"] + interior["of all disagreement (%)"] == pytest.approx(100)
    assert interior["of all disagreement (%)"] == 50  # (0,0) and (3,0)


def test_disagreement_by_class_and_no_disagreement():
    y1 = TRUTH.clone()
    y2 = TRUTH.clone()
    y2[0, 0, 4] = 8
    names = [str(c) for c in range(10)]
    tab = dg.disagreement_by_class(y1, y2, y2, TRUTH, names)
    assert tab.loc["3", "pixels"] == 3 and tab.loc["3", "disagree (%)"] == pytest.approx(100 / 3)
    assert tab.loc["3", "of all disagreement (%)"] == 100 and tab.loc["3", "union right (%)"] == 0
    assert tab.loc["7", "disagree (%)"] == 0 and math.isnan(tab.loc["7", "union right (%)"])
    assert tab.loc["9", "pixels"] == 0 and math.isnan(tab.loc["9", "disagree (%)"])
    same = dg.where_they_disagree(TRUTH, TRUTH, TRUTH, TRUTH)
    assert (same["disagree (%)"] == 0).all() and same["union right (%)"].isna().all()


def test_per_class_gain_averages_seeds_and_subtracts_the_baseline():
    per_class = {"supervised": [[0.9, 0.2, None], [0.9, 0.4, None]], "cps": [0.9, 0.5, 0.1], "cpcl": [0.8, 0.6, np.nan]}
    tab = dg.per_class_gain(per_class, ["bg", "1", "2"])
    assert list(tab.columns) == ["supervised IoU (%)", "cps − supervised", "cpcl − supervised"]
    assert tab.loc["1", "supervised IoU (%)"] == pytest.approx(30)
    assert tab.loc["1", "cps − supervised"] == pytest.approx(20) and tab.loc["bg", "cpcl − supervised"] == pytest.approx(-10)
    assert math.isnan(tab.loc["2", "cps − supervised"])
    with pytest.raises(KeyError, match="baseline"):
        dg.per_class_gain({"cps": [0.1]}, ["bg"])


def test_on_scenes_of_a_tiny_run_has_consistent_tables():
    from cpcl_kit.config import make_config
    from cpcl_kit.data import build_data
    from cpcl_kit.nets.deeplab import build_nets

    # no void outline: every pixel of the scenes is labeled, so the tables count all of them
    cfg = make_config("smoke", {"n_train_scenes": 16, "n_val_scenes": 4, "backbone_weights": "none",
                                "void_band": 0, "student_aug": "none"})
    torch.manual_seed(0)
    nets = build_nets(cfg)
    regions, classes = dg.on_scenes(nets, build_data(cfg), cfg, n_batches=2, batch=2)
    assert regions.loc["all", "pixels"] == 2 * 2 * cfg.crop ** 2
    assert classes["pixels"].sum() == regions.loc["all", "pixels"]
    # the per-class shares of the disagreement add up to all of it
    assert classes["of all disagreement (%)"].sum() == pytest.approx(100, abs=1e-6) or regions.loc["all", "disagree (%)"] == 0


def test_compare_runs_looks_at_the_batches_each_run_learnt_from():
    """Each run's batches come from its own recipe: CutMix-mixed for one, the scenes for the other."""
    from types import SimpleNamespace

    from cpcl_kit.config import make_config
    from cpcl_kit.data import build_data
    from cpcl_kit.nets.deeplab import build_nets

    cfg = make_config("smoke", {"n_train_scenes": 16, "n_val_scenes": 4, "backbone_weights": "none"})
    torch.manual_seed(0)
    nets, data = build_nets(cfg), build_data(cfg)
    runs = {"mixed": SimpleNamespace(nets=nets, config=make_config("smoke", cutmix_boxes=3)),
            "plain": SimpleNamespace(nets=nets, config=make_config("smoke", cutmix_boxes=0))}
    regions, _ = dg.compare_runs(runs, data, n_batches=2, batch=2)
    for name, run in runs.items():
        want, _ = dg.on_scenes(nets, data, run.config, n_batches=2, batch=2)
        assert regions[name].equals(want)
    assert not regions["mixed"].equals(regions["plain"])


def test_runs_at_hand_falls_back_to_the_shared_cpcl_run(tmp_path, monkeypatch):
    """Notebook 07's runs: the prepared set's or the live grid's CPS and CPCL runs; without them the
    CPCL run notebooks 04-06 and 08 share in out_dir/runs (saying CPS is missing); else a sentence
    naming what to run, with no machine path."""
    from cpcl_kit.engine import runs
    from cpcl_kit.engine.runs import RunResult
    from cpcl_kit.experiments import prepared
    from cpcl_kit.teach.notebook import notebook_config

    monkeypatch.chdir(tmp_path)
    out, grid = tmp_path / "out", tmp_path / "out" / "ablation_smoke"
    cfg = notebook_config("smoke", method="cpcl", seed=0)
    loaded = []
    monkeypatch.setattr(runs, "load_run", lambda path, *a, **k: loaded.append(path) or RunResult(cfg, [], None, {}, path))
    monkeypatch.setattr(prepared, "two_net_runs", lambda *a, **k: {})
    found, text = dg.runs_at_hand("smoke", out, grid, seed=0)
    assert found == {} and text.startswith("no CPS or CPCL run with nets here: notebook 04 trains the shared CPCL "
                                           "run of the smoke preset into out/runs")
    shared = runs.notebook_run_dir(out, cfg)  # out/runs/cpcl_smoke_1-16_seed0, as notebook 04 names it
    shared.mkdir(parents=True)
    (shared / runs.METRICS).write_text("{}")
    assert dg.runs_at_hand("smoke", out, grid)[0] == {}  # finished but without its nets: not usable
    (shared / runs.CHECKPOINT).write_text("")
    found, text = dg.runs_at_hand("smoke", out, grid)
    assert list(found) == ["CPCL"] and loaded[-1] == shared
    assert text.startswith("CPCL from the CPCL run notebooks 04-06 and 08 share (smoke preset, seed 0, ")
    assert "no CPS run is at hand" in text
    both = {"cps": RunResult(cfg, [], None, {}, grid / "cps__1-16__seed0"),
            "cpcl": RunResult(cfg, [], None, {}, grid / "cpcl__1-16__seed0")}
    monkeypatch.setattr(prepared, "two_net_runs", lambda *a, **k: both)
    found, text = dg.runs_at_hand("smoke", out, grid)
    assert list(found) == ["CPS", "CPCL"] and text.startswith("CPS and CPCL from the live grid's (smoke preset")
    assert "no CPS run" not in text
