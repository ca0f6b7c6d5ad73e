"""Ablation grids: parsing, a real tiny grid, skipping finished runs, resuming, collecting."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from cpcl_kit.engine import runs
from cpcl_kit.engine.train import RunResult
from cpcl_kit.errors import KitError
from cpcl_kit.experiments import ablate


@pytest.fixture
def one_thread():
    """Train with one torch thread: on a shared 2-core machine, two spinning OpenMP threads per
    process are several times slower than one when other processes compete for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_parse_grid_words():
    g = ablate.parse_grid(["variants=cpcl,supervised", "fractions=1/16,1/8", "seeds=0,1"])
    assert g == {"variants": ["cpcl", "supervised"], "fractions": ["1/16", "1/8"], "seeds": [0, 1]}
    assert ablate.parse_grid(["seeds=3"]) == {"variants": list(ablate.VARIANTS), "fractions": ["1/16"], "seeds": [3]}
    assert ablate.parse_grid(["variants=all"])["variants"] == list(ablate.VARIANTS)
    assert ablate.parse_grid(["variants=cps,cps"])["variants"] == ["cps"]


@pytest.mark.parametrize("words, needle", [
    (["variants=cpcl,bogus"], "valid variants: cpcl, inter_only, union_only, no_reweight"),
    (["seeds=a"], "seeds must be integers"),
    (["fractions=2/1"], "labeled"),
    (["colour=red"], "unknown key"),
    (["variants"], "key=value"),
    (["seeds=0", "seeds=1"], "twice"),
])
def test_parse_grid_errors(words, needle):
    with pytest.raises(KitError, match=needle):
        ablate.parse_grid(words)


def test_variant_configs():
    cfg = ablate.run_config("inter_only", "1/8", 3, "smoke", {"iterations": "5", "method": "cps"})
    assert (cfg.method, cfg.targets, cfg.labeled, cfg.seed, cfg.iterations) == ("cpcl", ("inter", "inter"), "1/8", 3, 5)
    assert ablate.run_config("union_by_confidence", "1/16", 0).union_rule == "confidence"
    assert ablate.run_config("no_reweight", "1/16", 0).reweight is False
    assert ablate.run_config("supervised", "1/16", 0).method == "supervised"
    assert ablate.run_name("union_only", "1/16", 2) == "union_only__1-16__seed2"
    assert ablate.default_grid("smoke")["variants"] == ["cpcl", "supervised"]
    assert ablate.default_grid("benchmark", seed=1) == {"variants": list(ablate.VARIANTS),
                                                        "fractions": ["1/16"], "seeds": [1, 2, 3]}
    assert ablate.default_grid("demo", seed=1)["seeds"] == [1]
    for preset in ("smoke", "demo", "benchmark"):  # the notebook's schedules are valid settings
        ablate.run_config("cpcl", "1/16", 0, preset, ablate.short_schedule(preset))


def test_real_tiny_grid_runs_then_skips(tmp_path, one_thread):
    grid = ablate.parse_grid(["variants=cpcl,supervised", "fractions=1/16", "seeds=0"])
    small = {"iterations": "4", "n_train_scenes": "32", "n_val_scenes": "8"}
    table = ablate.run_grid(grid, tmp_path, preset="smoke", overrides=small, progress=False,
                            log=None, keep_checkpoints=("supervised",))
    assert list(table["variant"]) == ["cpcl", "supervised"]
    assert set(ablate.COLUMNS) <= set(table.columns)
    assert table["miou"].between(0, 1).all() and (table["iterations"] == 4).all()
    assert list(table["method"]) == ["cpcl", "supervised"]
    on_disk = pd.read_csv(tmp_path / "ablation.csv")
    assert len(on_disk) == 2 and not list(tmp_path.glob(".ablation.csv.tmp*"))
    assert not (tmp_path / "cpcl__1-16__seed0" / "checkpoint.pt").exists()  # only the named variants keep theirs
    assert (tmp_path / "supervised__1-16__seed0" / "checkpoint.pt").exists()
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/metrics.json")}
    lines = []
    again = ablate.run_grid(grid, tmp_path, preset="smoke", overrides=small, progress=False,
                            log=lines.append)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/metrics.json")} == stamps
    assert all("skipped" in line for line in lines) and len(lines) == 2
    pd.testing.assert_frame_equal(again, table)
    per_class = ablate.per_class(tmp_path)
    assert len(per_class) == 2 * 11 and set(per_class["variant"]) == {"cpcl", "supervised"}
    s = ablate.summarise(table)
    assert s.loc[s["variant"] == "cpcl", "Δ vs cpcl"].iloc[0] == 0
    # a finished folder from other settings is not silently reused
    with pytest.raises(KitError, match="other settings"):
        ablate.run_grid(grid, tmp_path, preset="smoke", overrides={**small, "iterations": "6"}, progress=False,
                        log=None)


def _fake_train(calls):
    def train(cfg, out_dir=None, resume=False, progress=True, **kw):
        calls.append((cfg.method, cfg.seed, resume, str(out_dir)))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
        m = {"miou": 0.5 + 0.01 * cfg.seed, "pixel_acc": 0.9, "per_class_iou": [0.5, None],
             "class_names": ["bg", "x"], "seconds": 1.0}
        (out_dir / "metrics.json").write_text(json.dumps(m))
        return RunResult(cfg, [], pd.DataFrame(), m, out_dir)
    return train


def test_skip_resume_and_half_written_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("cpcl_kit.engine.train.train", _fake_train(calls))
    grid = {"variants": ["cpcl", "cps"], "fractions": ["1/16"], "seeds": [0, 1]}
    # cps seed 0 was interrupted after a checkpoint; cps seed 1 only got as far as its config
    for seed, files in ((0, ("config.json", "checkpoint.pt")), (1, ("config.json",))):
        d = tmp_path / ablate.run_name("cps", "1/16", seed)
        runs.write_config(d, ablate.run_config("cps", "1/16", seed, "smoke"))
        if "checkpoint.pt" in files:
            (d / "checkpoint.pt").write_text("{}")
    assert ablate.collect(tmp_path).empty  # half-written runs are not counted
    table = ablate.run_grid(grid, tmp_path, preset="smoke", log=None)
    assert sorted(calls) == sorted([("cpcl", 0, False, str(tmp_path / "cpcl__1-16__seed0")),
                                    ("cpcl", 1, False, str(tmp_path / "cpcl__1-16__seed1")),
                                    ("cps", 0, True, str(tmp_path / "cps__1-16__seed0")),
                                    ("cps", 1, False, str(tmp_path / "cps__1-16__seed1"))])
    assert len(table) == 4 and list(table["variant"]) == ["cpcl", "cpcl", "cps", "cps"]
    calls.clear()
    ablate.run_grid(grid, tmp_path, preset="smoke", log=None)
    assert calls == []
    # an unrelated folder and a run without metrics stay out of the table
    (tmp_path / "notes").mkdir()
    (tmp_path / "supervised__1-16__seed0").mkdir()
    assert len(ablate.collect(tmp_path)) == 4


def test_bad_variant_stops_before_training(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("cpcl_kit.engine.train.train", _fake_train(calls))
    with pytest.raises(KitError, match="valid variants"):
        ablate.run_grid({"variants": ["cpcl", "nope"]}, tmp_path, log=None)
    with pytest.raises(KitError, match="unknown setting"):
        ablate.run_grid({"variants": ["cpcl"]}, tmp_path, overrides={"colour": "1"}, log=None)
    assert calls == []


def test_cli_ablate(tmp_path, monkeypatch, capsys):
    from cpcl_kit.cli import main

    calls = []
    monkeypatch.setattr("cpcl_kit.engine.train.train", _fake_train(calls))
    rc = main(["ablate", "--grid", "variants=supervised", "seeds=0,1", "--out", str(tmp_path), "--quiet",
               "--set", "iterations=3"])
    assert rc == 0 and len(calls) == 2
    assert "ablation.csv" in capsys.readouterr().out
    assert main(["ablate", "--grid", "variants=nope", "--out", str(tmp_path)]) == 2
    assert "valid variants" in capsys.readouterr().err


def test_parallel_grid_equals_sequential(tmp_path, one_thread):
    """jobs=2 trains in two spawned one-thread workers and gives the very numbers of jobs=1."""
    grid = {"variants": ["cpcl", "supervised"], "fractions": ["1/16"], "seeds": [1]}
    small = {"iterations": "4", "n_train_scenes": "32", "n_val_scenes": "8"}
    seq = ablate.run_grid(grid, tmp_path / "seq", preset="smoke", overrides=small, progress=False, log=None)
    lines = []
    par = ablate.run_grid(grid, tmp_path / "par", preset="smoke", overrides=small, progress=False,
                          log=lines.append, jobs=2, threads=1)
    assert "2 runs in 2 worker processes, 1 torch thread(s) each" in lines
    assert sum("mIoU" in line for line in lines) == 2
    cols = ["variant", "seed", "miou", "digit_miou", "pixel_acc"]
    pd.testing.assert_frame_equal(seq[cols], par[cols])
    for run in ("cpcl__1-16__seed1", "supervised__1-16__seed1"):
        a = pd.read_csv(tmp_path / "seq" / run / "history.csv").drop(columns="seconds")
        b = pd.read_csv(tmp_path / "par" / run / "history.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(a, b)


def test_parallel_grid_failure_is_one_clear_error(tmp_path):
    """A KitError inside a worker comes back as that KitError and stops the grid."""
    grid = {"variants": ["cpcl", "supervised"], "fractions": ["1/16"], "seeds": [0]}
    missing = tmp_path / "no-such-voc"
    with pytest.raises(KitError, match="no-such-voc"):
        ablate.run_grid(grid, tmp_path / "out", preset="smoke", log=None, progress=False, jobs=2, threads=1,
                        overrides={"dataset": "voc", "data_root": str(missing), "backbone_weights": "none"})
    assert ablate.collect(tmp_path / "out").empty
    with pytest.raises(KitError, match="jobs: expected at least 1"):
        ablate.run_grid(grid, tmp_path / "out", jobs=0, log=None)


def test_a_worker_stops_when_its_grid_process_is_killed(tmp_path):
    """A grid killed with SIGKILL leaves no worker training on (and holding its run's lock)."""
    import os
    import subprocess
    import sys
    import time

    script = (
        "import multiprocessing, os, time\n"
        "from cpcl_kit.experiments import ablate\n"
        "if __name__ == '__main__':\n"
        "    pool = multiprocessing.get_context('spawn').Pool(1, initializer=ablate._worker_init, initargs=(1,))\n"
        "    print(pool.apply(os.getpid), flush=True)\n"
        "    time.sleep(60)\n")
    path = tmp_path / "grid.py"
    path.write_text(script)
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    for _ in range(100):  # the worker checks every 2 s
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, 9)
        raise AssertionError("the worker outlived its killed grid process")


def test_a_list_of_grids_runs_their_cells_once_and_full_supervision(tmp_path, one_thread):
    """Two grids in one call (three runs, one shared cell): "all" labels every scene."""
    small = {"iterations": "2", "n_train_scenes": "16", "n_val_scenes": "4", "sup_only_iters": "1",
             "rampup_iters": "0"}
    grids = [{"variants": ["supervised", "cpcl"], "fractions": ["1/16"], "seeds": [0]},
             {"variants": ["supervised"], "fractions": ["all", "1/16"], "seeds": [0]}]
    lines = []
    table = ablate.run_grid(grids, tmp_path, preset="smoke", overrides=small, progress=False, log=lines.append)
    assert sorted(table["run"]) == ["cpcl__1-16__seed0", "supervised__1-16__seed0", "supervised__all__seed0"]
    assert sum("training" in line for line in lines) == 3
    assert json.loads((tmp_path / "supervised__all__seed0" / "config.json").read_text())["labeled"] == "all"


def test_every_variant_says_what_it_changes():
    """Notebook 07 shows ablate.VARIANT_NOTES as its table of variants: a variant added to
    ablate.VARIANTS without a note is a variant the student cannot read about."""
    missing = [v for v in ablate.VARIANTS if not ablate.VARIANT_NOTES.get(v)]
    assert not missing, f"ablate.VARIANT_NOTES has no line for {missing}"
    assert set(ablate.VARIANT_NOTES) == set(ablate.VARIANTS)
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "07_ablations.ipynb"
    assert "ablate.VARIANT_NOTES" in nb.read_text()


def test_one_job_trains_with_the_threads_asked_and_restores_them(tmp_path, monkeypatch):
    """jobs=1 (or a single run left) trains in this process: threads=1 must hold there too, as in
    the workers; the caller's thread count comes back afterwards."""
    seen, real = [], ablate._train_cell
    monkeypatch.setattr(ablate, "_train_cell", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grid = {"variants": ["supervised"], "fractions": ["1/16"], "seeds": [0]}
        small = {"iterations": "2", "n_train_scenes": "32", "n_val_scenes": "8"}
        ablate.run_grid(grid, tmp_path, preset="smoke", overrides=small, progress=False, log=None, threads=1)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
