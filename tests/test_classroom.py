"""Notebook 08's classroom: the stages it shows, the threshold control's settings and the coverage
sentence, on pseudo labels made here from seeded logits (no training)."""

import dataclasses
import re
from types import SimpleNamespace

import matplotlib
import pytest
import torch

from cpcl_kit.config import PRESETS, make_config
from cpcl_kit.constants import IGNORE_INDEX
from cpcl_kit.engine import runs
from cpcl_kit.method import scenes
from cpcl_kit.method.cpcl import pseudo_supervision
from cpcl_kit.teach import analysis, classroom
from cpcl_kit.teach.classroom import GREY_SHARES, INTERSECTION, UNION, Classroom, grey_threshold, teaching_stages

matplotlib.use("Agg")

NAMES = ["background"] + [str(d) for d in range(10)]


def fake_scenes(nets, data, cfg, n, seed):
    """Stand-in for ``scenes.pseudo_labels_on_scenes``: the labels of two seeded teachers whose
    confidence grows with the stage (``nets`` is the stage's iteration here), most weights close to
    1 as on a trained run."""
    g = torch.Generator().manual_seed(1000 * nets + seed)
    size = 24
    z1 = torch.randn(n, len(NAMES), size, size, generator=g) * (3 + 8 * nets / cfg.iterations)
    z2 = z1 + torch.randn(z1.shape, generator=g)
    masks = torch.randint(0, len(NAMES), (n, size, size), generator=g)
    labels = pseudo_supervision(z1, z2, union_rule=cfg.union_rule)
    # padding, as a rotated student view has: no truth and no pseudo label there, while the nets may agree
    void = torch.zeros(n, size, size, dtype=torch.bool)
    void[:, :3] = True
    masks[void] = IGNORE_INDEX
    labels = dataclasses.replace(labels, inter=labels.inter.masked_fill(void, IGNORE_INDEX),
                                 union=labels.union.masked_fill(void, IGNORE_INDEX))
    return torch.rand(n, 3, size, size, generator=g), masks, labels


def make_room(monkeypatch, preset="demo", stages=None, n_scenes=4):
    cfg = make_config(preset)
    its = runs.stage_iterations(cfg) if stages is None else stages
    # The nets of each stage are stood in for by its iteration (fake_scenes reads it).
    monkeypatch.setattr(analysis, "stage_nets", lambda run: {it: it for it in sorted(set(its) | {cfg.iterations})})
    monkeypatch.setattr(scenes, "pseudo_labels_on_scenes", fake_scenes)
    run = SimpleNamespace(config=cfg, out_dir=None, nets=[])
    return Classroom(cfg, run, SimpleNamespace(class_names=NAMES), n_scenes=n_scenes, seed=0), cfg


@pytest.mark.parametrize("preset", [p for p in PRESETS if make_config(p).sup_only_iters > 0])
def test_at_most_one_stage_from_the_supervised_only_start(preset, monkeypatch):
    """The slider spends one stage on nets trained by the labeled loss alone: the last such snapshot,
    the nets the first unsupervised step takes its pseudo labels from; then every later one."""
    room, cfg = make_room(monkeypatch, preset)
    kept = runs.stage_iterations(cfg)
    supervised_only = [it for it in room.stages if it <= cfg.sup_only_iters]
    assert supervised_only == [max(it for it in kept if it <= cfg.sup_only_iters)]
    assert room.stages == sorted(supervised_only + [it for it in kept if it > cfg.sup_only_iters])
    assert room.stages[-1] == cfg.iterations and list(room.nets_at) == room.stages
    # the set the prepared runs keep (three snapshots) too
    assert [it for it in teaching_stages(runs.stage_iterations(cfg, 3), cfg.sup_only_iters)
            if it <= cfg.sup_only_iters] == supervised_only


def test_teaching_stages_edge_cases():
    assert teaching_stages([1, 13, 26, 40], 0) == [1, 13, 26, 40]  # no supervised-only start
    assert teaching_stages([40], 10) == [40]  # a run without snapshots: its final nets
    assert teaching_stages([2, 5, 9], 10) == [9]  # a run that never left the supervised-only start
    assert teaching_stages({150: "a", 600: "b", 1500: "c", 2400: "d"}, 600) == [600, 1500, 2400]


def test_grey_threshold_greys_the_stated_share():
    """ω < threshold greys exactly the share stated; without ties that is the share asked for, with
    ties never more than asked."""
    g = torch.Generator().manual_seed(0)
    # most weights within a hundredth of 1, as on a trained run, where a 0.05-step ω grid greys nothing
    w = 1 - 10 ** -(2 + 3 * torch.rand(5000, generator=g))
    w[:1250] = torch.rand(1250, generator=g)
    assert (w >= 0.99).float().mean() >= 0.74 and (w < 0.95).float().mean() < 0.25
    for share in GREY_SHARES:
        t, stated = grey_threshold(w, share)
        assert stated == int((w < t).sum()) / len(w)
        assert abs(stated - share) <= 0.005, (share, stated)  # float32 ties near 1 are rare
    assert grey_threshold(w, 0.0) == (0.0, 0.0)

    tied = torch.tensor([0.2, 0.5, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert grey_threshold(tied, 0.25) == (0.8999999761581421, 0.25)
    t, stated = grey_threshold(tied, 0.75)
    assert stated == 0.375 == (tied < t).float().mean().item()  # the ones tie: they grey together or not at all
    assert grey_threshold(tied, 1.0)[1] == 1.0


def test_threshold_settings_grey_the_stated_share_of_the_shown_union(monkeypatch):
    room, cfg = make_room(monkeypatch)
    for stage in range(len(room.stages)):
        labels = room.labels_at(stage, cfg.union_rule)[2]
        for share in GREY_SHARES:
            t, stated = room.grey_threshold(scene=1, stage=stage, share=share)
            shown = labels.union[1] != IGNORE_INDEX  # the padding has no label to grey
            union = classroom.greyed(labels, t).union[1]
            assert (union[shown] == IGNORE_INDEX).float().mean().item() == pytest.approx(stated)
            assert abs(stated - share) < 0.01
    fig = room.render(scene=1, grey=0.5)
    t, stated = room.grey_threshold(scene=1, share=0.5)
    title = fig._suptitle.get_text()
    assert f"ω < {classroom.weight_text(t)} greyed ({100 * stated:.0f} % of the union)" in title, title
    assert "greyed" not in room.render(scene=1, grey=0.0)._suptitle.get_text()
    matplotlib.pyplot.close("all")


def test_show_headless_draws_the_start_values(monkeypatch):
    pytest.importorskip("ipywidgets")
    room, _ = make_room(monkeypatch)
    before = set(matplotlib.pyplot.get_fignums())
    room.show(interactive=False)
    (new,) = set(matplotlib.pyplot.get_fignums()) - before
    title = matplotlib.pyplot.figure(new)._suptitle.get_text()
    assert title.startswith(f"iteration {room.stages[-1]} of ") and "greyed" not in title
    matplotlib.pyplot.close("all")


def test_coverage_sentence_reads_the_quality_table(monkeypatch):
    room, _ = make_room(monkeypatch)
    q = room.quality()
    first, last = room.stages[0], room.stages[-1]
    sentence = room.coverage_sentence()
    assert sentence == room.coverage_sentence(q)
    expected = [q.loc[kind, (col, it)] for kind, its in ((INTERSECTION, (first, last)), (UNION, (first, last)))
                for it in its for col in ("coverage (%)", "accuracy (%)")]
    assert [float(x) for x in re.findall(r"(\d+\.\d) %", sentence)] == [round(float(v), 1) for v in expected]
    assert f"At iteration {first} (the first stage)" in sentence and f"at iteration {last} (the last)" in sentence
    assert f"of the {room.n_scenes} scenes" in sentence
    # coverage counts the pixels whose target carries a label, not the padding
    for k, it in enumerate(room.stages):
        labels = room.labels_at(k, room.cfg.union_rule)[2]
        for kind, target in ((INTERSECTION, labels.inter), (UNION, labels.union)):
            carried = 100 * (target != IGNORE_INDEX).float().mean().item()
            assert q.loc[kind, ("coverage (%)", it)] == pytest.approx(carried, abs=0.06)
        assert q.loc[UNION, ("coverage (%)", it)] == pytest.approx(100 * 21 / 24, abs=0.06)  # 3 rows of padding
        assert q.loc[INTERSECTION, ("coverage (%)", it)] < 100 * labels.agree.float().mean().item()

    only, _ = make_room(monkeypatch, stages=[])
    assert only.stages == [only.cfg.iterations]
    one = only.coverage_sentence()
    assert "(the only stage)" in one and "(the last)" not in one and len(re.findall(r"\d+\.\d %", one)) == 4
