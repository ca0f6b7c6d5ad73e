"""The prepared run set: one command trains it into its folder; the notebooks find it there."""

import json

import pandas as pd
import pytest
import torch

from cpcl_kit import cli
from cpcl_kit.engine import runs
from cpcl_kit.experiments import prepared
from cpcl_kit.experiments.noise import NoiseTable

SMALL = ["--set", "iterations=3", "--set", "n_train_scenes=16", "--set", "n_val_scenes=4",
         "--set", "sup_only_iters=1", "--set", "rampup_iters=0", "--set", "checkpoint_every=2"]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_default_folder_is_outside_the_tree_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv("CPCL_KIT_PREPARED", raising=False)
    monkeypatch.delenv("CPCL_KIT_CACHE", raising=False)  # (the tests point it elsewhere)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert prepared.default_dir("benchmark") == tmp_path / "cache" / "cpcl-kit" / "prepared" / "benchmark"
    monkeypatch.setenv("CPCL_KIT_PREPARED", str(tmp_path / "mine"))
    assert prepared.default_dir() == tmp_path / "mine"


def test_the_set_is_every_method_at_one_sixteenth_and_full_supervision():
    cells = [(v, f) for g in prepared.grids([0]) for v in g["variants"] for f in g["fractions"]]
    assert sorted(cells) == sorted([("supervised", "1/16"), ("cps", "1/16"), ("cpcl", "1/16"), ("supervised", "all")])
    assert [n for n, _, _ in prepared.MEMBERS] == ["supervised", "cps", "cpcl", "full"]


def test_prepare_trains_once_then_find_and_load(tmp_path, capsys, monkeypatch, one_thread):
    folder = tmp_path / "set"
    assert prepared.find("smoke", 0, folder) is None
    cmd = ["prepare", "--preset", "smoke", "--out", str(folder), "--jobs", "1", "--quiet", *SMALL]
    assert cli.main(cmd) == 0
    out = capsys.readouterr().out
    assert "notebooks 04-08 now show these runs" in out and "supervised" in out
    dirs = prepared.find("smoke", 0, folder)
    assert dirs and set(dirs) == {"supervised", "cps", "cpcl", "full"}
    assert prepared.find("benchmark", 0, folder) is None  # trained with another preset: not this set
    assert prepared.find("smoke", 1, folder) is None      # another seed: not prepared
    loaded = prepared.load(dirs)
    assert loaded["full"].config.labeled == "all" and loaded["cpcl"].config.method == "cpcl"
    assert len(loaded["cpcl"].nets) == 2 and runs.list_stages(dirs["cpcl"])  # stage snapshots for notebook 08
    # a second call finds everything finished and trains nothing
    stamp = (dirs["cpcl"] / "metrics.json").stat().st_mtime_ns
    assert cli.main(cmd) == 0
    assert (dirs["cpcl"] / "metrics.json").stat().st_mtime_ns == stamp
    # the overrides it was prepared with are recorded, so find() compares the runs with them
    assert int(json.loads((folder / prepared.SETTINGS).read_text())["overrides"]["iterations"]) == 3
    assert prepared.stale("smoke", 0, folder) == []
    # a set made when the preset said otherwise (here: CPCL with 2 CutMix boxes) is not shown as today's
    path = dirs["cpcl"] / runs.CONFIG
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "cutmix_boxes": 2}))
    assert prepared.stale("smoke", 0, folder) == ["cutmix_boxes"] and prepared.find("smoke", 0, folder) is None
    monkeypatch.setenv("CPCL_KIT_PREPARED", str(folder))
    line = prepared.how_to_make("smoke")
    assert "older smoke preset" in line and "cutmix_boxes" in line and "move that folder away" in line
    path.write_text(json.dumps(saved))
    assert prepared.find("smoke", 0, folder) == dirs
    # a member missing its metrics makes the set incomplete
    (dirs["cps"] / "metrics.json").unlink()
    assert prepared.find("smoke", 0, folder) is None


def test_prepare_refuses_a_folder_of_other_settings(tmp_path, capsys, one_thread):
    folder = tmp_path / "set"
    base = ["prepare", "--preset", "smoke", "--out", str(folder), "--jobs", "1", "--quiet", *SMALL]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main([*base, "--set", "unsup_weight=2"]) == 2
    err = capsys.readouterr().err
    assert "unsup_weight" in err and "other settings" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("seeds", ["", "a,b"])
def test_prepare_bad_seeds_is_one_line(seeds, capsys):
    assert cli.main(["prepare", "--seeds", seeds]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_notebooks_show_the_prepared_cpcl_run_when_it_is_there(tmp_path, monkeypatch, capsys, one_thread):
    """open_shared_run: the live run without a set (saying how to make one), the set's run with it."""
    from cpcl_kit.teach import notebook

    folder = tmp_path / "set"
    monkeypatch.setenv("CPCL_KIT_PREPARED", str(folder))
    monkeypatch.setattr(prepared, "PRESET", "smoke")      # a smoke-sized set stands in for the benchmark
    monkeypatch.setattr(prepared, "SHOWN_FOR", ("smoke",))
    assert cli.main(["prepare", "--preset", "smoke", "--jobs", "1", "--quiet", "--set", "iterations=4", *SMALL[2:]]) == 0
    capsys.readouterr()
    cfg, run, data = notebook.open_shared_run("smoke", tmp_path / "out", seed=0)
    assert run.out_dir == folder / "cpcl__1-16__seed0" and len(run.nets) == 2
    assert cfg.iterations == 4 and "prepared run set" in capsys.readouterr().out
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained live
    cfg, run, _ = notebook.open_shared_run("smoke", tmp_path / "out", seed=0, use_prepared=False)
    assert run.out_dir.parent == tmp_path / "out" / "runs" and cfg.iterations == 12
    (folder / "cpcl__1-16__seed0" / "metrics.json").unlink()  # an incomplete set is not shown
    notebook.open_shared_run("smoke", tmp_path / "out", seed=0)
    assert "make prepared" in capsys.readouterr().out


SUMMARY = {"preset": "benchmark", "commit": "abc1234", "command": "python benchmarks/ssl_gain.py --jobs 2",
           "runs_finished": 12, "grid_wall_seconds": 3600.0,
           "supervised": {"seeds": [0, 1, 2], "miou": [0.40, 0.42, 0.41], "mean": 0.41, "std": 0.01,
                          "digit_mean": 0.35, "seconds": [300, 310, 320]},
           "cpcl": {"seeds": [0, 1, 2], "miou": [0.50, 0.47, 0.52], "mean": 0.4967, "std": 0.0252,
                    "digit_mean": 0.45, "seconds": [900, 910, 920], "miou_net2": [0.5, 0.5, 0.5],
                    "miou_ensemble": [0.51, 0.52, 0.53]},
           "paired": {"seeds": [0, 1, 2], "cpcl_minus_supervised": {"per_seed": [10.0, 5.0, 11.0], "mean": 8.67},
                      "cps_minus_supervised": {"per_seed": [1.0, -1.0, 0.5], "mean": 0.17},
                      "cpcl_minus_cps": {"per_seed": [9.0, 6.0, 10.5], "mean": 8.5}}}


def test_committed_summary_tables_and_provenance(tmp_path):
    table = prepared.summary_table(SUMMARY)
    assert list(table.index) == ["supervised", "cpcl"]  # members absent from the summary are left out
    assert table.loc["cpcl", "seed 1"] == 47.0 and table.loc["cpcl", "ensemble (%)"] == 52.0
    assert not any("second" in c for c in table.columns)  # shared-CPU seconds are no method's cost
    paired = prepared.paired_table(SUMMARY)
    assert paired.loc["cpcl − supervised", "mean"] == pytest.approx(26 / 3, abs=0.01)
    assert set(paired["verdict"]) == {"not judged"}  # no noise table given
    rows = [{"method": m, "seed": s, "threads": t, "miou": 0.5 + (0.04 if (m == "cpcl" and t == 2) else 0)}
            for m in ("supervised", "cps", "cpcl") for s in (0, 1, 2) for t in (1, 2)]
    table = NoiseTable(pd.DataFrame(rows), {"preset": "benchmark"})  # every pair with cpcl moved 4 points
    paired = prepared.paired_table(SUMMARY, table)
    assert paired.loc["cpcl − supervised", "verdict"] == "ahead"             # 10, 5, 11: all > 0, mean 8.67 > 4
    assert paired.loc["cps − supervised", "verdict"] == "within the noise"   # signs differ
    text = prepared.verdicts(SUMMARY, table)
    assert text[0].startswith("CPCL − supervised: +8.7 points on the mean of 3 seeds (+10.0 (seed 0), +5.0 (seed 1)")
    assert "ahead on every seed" in text[0] and "4.0 points" in text[0] and "not every seed has the same sign" in text[1]
    line = prepared.provenance(SUMMARY)
    assert "commit abc1234" in line and "--jobs 2" in line and "60 min" in line and "seeds 0, 1, 2" in line
    assert prepared.committed(tmp_path / "missing.json") is None
    assert prepared.paired_table({}).empty


def test_the_time_it_says_is_the_timed_one(tmp_path, monkeypatch):
    """How long `make prepared` takes comes from its fresh-clone timing where that is committed, else
    from the benchmark grid's wall time over its seeds."""
    monkeypatch.setattr(prepared, "RESULTS_DIR", tmp_path)
    (tmp_path / "timing.json").write_text(json.dumps({"prepared": {"seconds": 476.0, "returncode": 0}}))
    assert "about 8 min" in prepared.how_to_make() and "timing.json" in prepared.how_to_make()
    (tmp_path / "timing.json").write_text(json.dumps({"prepared": {"seconds": 476.0, "returncode": 2}}))
    assert "timing.json" not in prepared.how_to_make()
