"""Ablation grids: parsing, a real tiny grid, skipping finished runs, resuming, collecting."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from cpcl_kit.engine import runs
from cpcl_kit.engine.runs import RunResult
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


# A grid whose every difference can be checked by hand (mIoU in 0..1; differences to CPCL in points):
# inter_only -4, -5, -4.5 (mean -4.5, sd 0.5); union_only +0.5, +1.0, -1.6 (signs differ, mean -0.03);
# cps -1, 0, +2 (CPCL − CPS +1, 0, -2: mean -0.33, sd 1.5275); supervised -10 on every seed.
HAND = {"cpcl": (0.70, 0.72, 0.71), "cps": (0.69, 0.72, 0.73), "supervised": (0.60, 0.62, 0.61),
        "inter_only": (0.66, 0.67, 0.665), "union_only": (0.705, 0.73, 0.694)}


def hand_grid() -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "labeled": "1/16", "seed": s, "miou": m, "backbone": "abc123"}
                         for v, ms in HAND.items() for s, m in enumerate(ms)])


def floor_table(floor: float = 2.0, backbone: str = "abc123", config=None):
    """A noise table whose every pair with CPCL moved by exactly ``floor`` points between the two
    float orders (CPS − supervised by none): the stand-in for an unmeasured pair is ``floor`` too."""
    from cpcl_kit.config import make_config
    from cpcl_kit.experiments.noise import NoiseTable

    rows = [{"method": m, "seed": s, "threads": t, "backbone": backbone,
             "miou": 0.5 + (floor / 100 if (m == "cpcl" and t == 2) else 0)}
            for m in ("supervised", "cps", "cpcl") for s in (0, 1, 2) for t in (1, 2)]
    return NoiseTable(pd.DataFrame(rows), {"preset": "benchmark", "config": config or make_config("benchmark").to_dict(),
                                           "sets": [], "commit": "abc", "cpu": "x", "command": "python benchmarks/noise.py"})


def test_findings_are_sentences_computed_from_the_grid():
    t, nt = hand_grid(), floor_table(2.0)
    planned = ["cpcl", "cps", "supervised", "inter_only", "union_only"]
    lines = ablate.ingredient_findings(t, nt, planned)
    # inter_only: all seeds below, mean -4.5 beyond the stand-in floor 2, interval -4.5 ± 4.3027 x 0.5 / sqrt(3)
    assert lines[0] == ("Of the paper's ablations measured here (2 of 4, up to 3 seeds each), 1 changes the score "
                        "beyond the noise: inter_only is behind CPCL by 4.5 points on the mean. The others cannot "
                        "be told from CPCL at these seeds.")
    assert lines[1].startswith("inter_only (both nets learn the intersection (conservative only)): inter_only − CPCL: "
                               "-4.5 points on the mean of 3 seeds (-4.0 (seed 0), -5.0 (seed 1), -4.5 (seed 2)), "
                               "paired 95 % interval -5.7 to -3.3 points")
    assert "cannot tell at 3 seeds (within the noise: not every seed has the same sign)" in lines[2]
    assert lines[3:] == [f"{v} ({ablate.VARIANT_NOTES[v]}): not in this grid." for v in ("no_reweight", "union_by_confidence")]
    # CPCL − CPS +1, 0, -2: mean -0.33, interval -0.33 ± 4.3027 x 1.5275 / sqrt(3) = -4.1 to +3.5; with that
    # spread 11 seeds give 2.2281 x 1.5275 / sqrt(11) = 1.03, 12 give 2.2010 x 1.5275 / sqrt(12) = 0.97
    cps = ablate.cpcl_vs_cps(t, nt)
    assert cps.startswith("Does CPCL beat CPS on this benchmark? Not decided. CPCL − CPS: -0.3 points on the mean of "
                          "3 seeds (+1.0 (seed 0), +0.0 (seed 1), -2.0 (seed 2)), paired 95 % interval -4.1 to +3.5")
    assert "cannot tell at 3 seeds" in cps and cps.endswith("about 12 seeds would narrow the interval to ±1 point.")
    # CPCL − CPS -0.2, +0.2, +0.1: mean +0.03, interval ± 4.3027 x 0.2082 / sqrt(3) = -0.48 to +0.55, inside ±1
    close = t.copy()
    close.loc[close["variant"] == "cps", "miou"] = [0.702, 0.718, 0.709]
    assert ablate.cpcl_vs_cps(close, nt).startswith(
        "Does CPCL beat CPS on this benchmark? Not by more than 1 point either way at these seeds. CPCL − CPS: "
        "+0.0 points on the mean of 3 seeds (-0.2 (seed 0), +0.2 (seed 1), +0.1 (seed 2)), paired 95 % interval "
        "-0.5 to +0.6 points")
    assert ablate.cpcl_vs_cps(close, nt).endswith("the interval rules out a difference of more than 1 point either way.")
    gain = ablate.method_findings(t, nt)
    assert gain[0].startswith("CPCL − supervised: +10.0 points") and "interval +10.0 to +10.0" in gain[0]
    assert "CPCL is ahead on every seed" in gain[0] and gain[1].startswith("CPS − supervised: +10.3 points")
    assert ablate.strength_findings(t, nt, planned)[0].startswith("This grid has no strength-matched variant")
    assert "no seed of this grid has both it and cpcl finished" in ablate.strength_findings(t, nt)[0]
    # without a noise table nothing is judged, and the summary says so
    assert "shown, not judged" in ablate.ingredient_findings(t, None, planned)[0]
    assert ablate.cpcl_vs_cps(t, None).startswith("Does CPCL beat CPS on this benchmark? Not judged.")
    empty = t.iloc[:0]
    assert ablate.cpcl_vs_cps(empty, nt).endswith("No seed of this grid has both a CPCL and a CPS run finished yet.")
    assert ablate.ingredient_findings(empty, nt)[0] == "None of the paper's ablations has a seed paired with CPCL in this grid yet."


def test_lesson_paired_and_status_of_a_partial_grid():
    t, nt = hand_grid(), floor_table(2.0)
    lesson = ablate.lesson(t, nt)
    assert list(lesson.index) == ["inter_only", "union_only", "cps", "supervised"]  # the paper's ablations first
    assert lesson.loc["inter_only", ["Δ vs cpcl (mean)", "95 % low", "95 % high"]].tolist() == [-4.5, -5.7, -3.3]
    assert str(lesson.loc["union_only", "Δ vs cpcl (mean)"]) == "0.0"  # -0.03 rounds to 0.0, never -0.0
    assert lesson.loc["inter_only", "verdict"] == "behind" and lesson.loc["supervised", "verdict"] == "behind"
    p = ablate.paired(t, "cpcl", noise_table=nt)
    assert p.loc[("cps", "1/16"), ["95 % low", "95 % high"]].tolist() == [-3.46, 4.13]  # CPS − CPCL: +0.33 ± 3.79
    assert p.loc[("inter_only", "1/16"), "floor"] == 2.0
    meta = {"runs_expected": 18, "variants": [*HAND, "no_reweight"], "seeds": [0, 1, 2]}
    partial = t[~((t["variant"] == "cps") & (t["seed"] == 2))]
    status = ablate.grid_status(partial, meta)
    assert status.startswith("The grid is not finished: 14 of 18 runs so far (still missing: cps: seed 2; "
                             "no_reweight: seeds 0, 1, 2)")
    assert ablate.grid_status(t, {**meta, "runs_expected": 15}).startswith("All 15 runs of the grid are finished")
    # a partial grid pairs the seeds both runs finished: CPCL − CPS on seeds 0 and 1 (+1, 0)
    assert "on the mean of 2 seeds (+1.0 (seed 0), +0.0 (seed 1))" in ablate.cpcl_vs_cps(partial, nt)


def test_a_grid_is_judged_only_against_a_noise_table_of_its_recipe_and_backbone(tmp_path):
    import json as _json

    from cpcl_kit.config import make_config

    nt = floor_table(2.0)
    (tmp_path / "noise-benchmark.json").write_text(_json.dumps({**nt.meta, "runs": nt.runs.to_dict("records")}))
    meta = {"preset": "benchmark", "config": ablate.run_config("cpcl", "1/16", 0, "benchmark").to_dict()}
    t = hand_grid()
    assert ablate.grid_noise_table(t, meta, tmp_path).floor("cpcl", "cps") == pytest.approx(2.0)
    assert ablate.grid_noise_table(t.assign(backbone="other"), meta, tmp_path) is None  # another init
    other = make_config("benchmark", {"cutmix_boxes": 3, "student_aug": "none"}).to_dict()
    assert ablate.grid_noise_table(t, {**meta, "config": other}, tmp_path) is None  # another recipe
    assert ablate.grid_noise_table(t, {"preset": "benchmark"}, tmp_path) is None  # recipe not recorded (older grids)
    assert ablate.grid_noise_table(t.drop(columns="backbone"), meta, tmp_path) is None


def test_the_paired_differences_figure_draws_every_seed_interval_and_floor():
    import matplotlib

    from cpcl_kit.teach import plots

    matplotlib.use("Agg")
    t = hand_grid()
    fig = plots.paired_differences(ablate.paired(t, "cpcl", noise_table=floor_table(2.0)))
    ax = fig.axes[0]
    assert [x.get_text() for x in ax.get_yticklabels()] == ["inter_only", "union_only", "cps", "supervised"]
    assert len(ax.patches) == 4 and ax.patches[0].get_width() == pytest.approx(4.0)  # ± the floor of 2 points
    intervals = [line for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]]
    spans = {(round(min(line.get_xdata()), 2), round(max(line.get_xdata()), 2)) for line in intervals}
    assert len(intervals) == 4 and (-5.74, -3.26) in spans and (-10.0, -10.0) in spans  # inter_only; supervised
    assert len(ax.collections) == 2 * 4  # per row: the seeds and the mean
    empty = plots.paired_differences(ablate.paired(t.iloc[:0], "cpcl"))
    assert "no variant paired" in empty.axes[0].texts[0].get_text()


def test_provenance_names_the_recipe_the_training_call_and_the_machine():
    meta = {"preset": "benchmark", "recipe": "preset", "runs_finished": 14, "runs_expected": 21, "seeds": [0, 1, 2],
            "commits": ["abc1234"], "command": "python benchmarks/ablation.py --collect-only --runs <runs>",
            "wall_calls": [{"command": "python benchmarks/ablation.py --jobs 2 --runs <runs>", "seconds": 5400}],
            "cpus": ["Some CPU (avx2; 2 cores)"], "wall_seconds": 5400.0}
    assert ablate.provenance(meta) == (
        "committed grid (benchmark preset, the preset as it is, 14 of 21 runs, seeds 0, 1, 2), trained by commit(s) "
        "abc1234 with `python benchmarks/ablation.py --jobs 2 --runs <runs>`, tabulated by `python benchmarks/"
        "ablation.py --collect-only --runs <runs>`, 1.5 h of grid wall time on Some CPU (avx2; 2 cores)")
    old = {**meta, "command": "python benchmarks/ablation.py --jobs 2", "wall_calls": [], "cpus": []}
    del old["recipe"]  # the older grids' JSON names no recipe: they trained the CutMix one
    assert ablate.provenance(old).startswith("committed grid (benchmark preset, an older recipe (the official "
                                             "CutMix, train-mode teachers), 14 of 21 runs")
    assert ablate.provenance(old).endswith(": `python benchmarks/ablation.py --jobs 2`, 1.5 h of grid wall time on "
                                           "2 CPU cores")
