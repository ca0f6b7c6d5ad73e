"""benchmarks/ablation.py: the ablation grids run, resume and write their tables."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cpcl_kit.errors import KitError
from cpcl_kit.experiments import ablate

ROOT = Path(__file__).resolve().parent.parent
# the default results name of a grid of today's recipe (--recipe preset) on the smoke preset
GRID = "ablation-smoke-preset"


def in_process(monkeypatch):
    """benchmarks/ablation.py's main(argv), imported (no interpreter start per call)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_ablation", ROOT / "benchmarks" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_ablation_benchmark_runs_writes_and_is_read_back(tmp_path, monkeypatch, capsys):
    """The script end to end once (its own interpreter, as a user runs it), then in-process calls (an
    interpreter start per call cost most of this test); --jobs 2 is test_ablate's."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--preset", "smoke", "--seeds", "0,1",
           "--variants", "cps,first_release", "--set", "iterations=4", "--set", "sup_only_iters=1",
           "--set", "rampup_iters=0", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table, meta = ablate.committed_grid(folder=tmp_path, name=GRID)
    assert len(table) == 4 and set(table["variant"]) == {"cps", "first_release"}
    assert (table["commit"] != "unknown").all() and table["labeled"].eq("1/16").all()
    assert meta["runs_finished"] == meta["runs_expected"] == 4 and meta["wall_seconds"] > 0
    assert meta["cpus"] and meta["wall_calls"][0]["cpu"] == meta["cpus"][0]  # the machine that trained them
    assert "ablation.py" in meta["command"] and meta["commits"] == sorted(set(table["commit"]))
    assert meta["command"].startswith("python benchmarks/ablation.py --preset smoke")  # as a clone names it
    assert "--runs <runs> --results <results>" in meta["command"]
    assert meta["commit"] == subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip()
    md = (tmp_path / f"{GRID}.md").read_text()
    assert "Each variant minus cps" in md and "| first_release | 1/16 |" in md
    assert meta["recipe"] == "preset" and meta["config"]["iterations"] == 4  # the recipe it trained, recorded
    # the findings as sentences, each difference with its paired interval; no noise table holds for
    # a --set recipe, so nothing is judged
    assert "## Findings" in md and "| 95 % low | 95 % high |" in md and "Does CPCL beat CPS" in md
    assert "not in this grid" in md and "No noise table was measured for this recipe and backbone" in md
    assert "Does CPCL beat CPS on this benchmark? No seed of this grid has both" in md  # no cpcl in this grid
    assert "committed grid (smoke preset, the preset as it is, 4 of 4 runs, seeds 0, 1)" in ablate.provenance(meta)
    # the paired table is the per-seed difference of the CSV's own numbers
    p = ablate.paired(table, "cps")
    row = table.set_index(["variant", "seed"])["miou"]
    by_hand = round(100 * (row["first_release", 1] - row["cps", 1]), 2)
    assert abs(p.loc[("first_release", "1/16"), "seed 1"] - by_hand) < 0.011
    # a second call trains nothing and keeps the provenance of the first
    main, args = in_process(monkeypatch), cmd[2:]
    capsys.readouterr()
    main(args)
    assert capsys.readouterr().out.count("skipped") == 4
    assert ablate.committed_grid(folder=tmp_path, name=GRID)[1]["wall_seconds"] == meta["wall_seconds"]
    # a call for one variant extends the committed grid: the other variants' rows stay
    k = args.index("cps,first_release")
    main(args[:k] + ["first_release"] + args[k + 1:] + ["--collect-only"])
    kept, meta1 = ablate.committed_grid(folder=tmp_path, name=GRID)
    assert kept.equals(table) and meta1["variants"] == ["cps", "first_release"] and meta1["runs_expected"] == 4
    # another run folder (a fresh machine) keeps the committed rows it lacks, with their commit and
    # wall time, and a run finished there replaces its committed row
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "runs" / "cps__1-16__seed1", other / "cps__1-16__seed1")
    metrics = other / "cps__1-16__seed1" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "miou": 0.123}))
    swap = cmd[2:cmd.index("--runs")] + ["--runs", str(other)] + cmd[cmd.index("--runs") + 2:]
    meta2 = main(swap + ["--collect-only"])
    table2 = ablate.committed_grid(folder=tmp_path, name=GRID)[0]
    assert meta2["runs_finished"] == 4 and meta2["runs_kept"] == 3
    row = table2.set_index("run").loc["cps__1-16__seed1"]
    assert row["miou"] == 0.123  # the folder's run, not the committed row
    same = [c for c in table.columns if c != "miou"]
    assert table2[same].equals(table[same])  # the same runs in the same order (a run's metrics name its commit)
    assert table2[table2["run"] != "cps__1-16__seed1"].equals(table[table["run"] != "cps__1-16__seed1"])
    assert meta2["wall_seconds"] == meta["wall_seconds"]  # the kept rows' calls, counted once
    assert main(swap + ["--collect-only"])["wall_seconds"] == meta["wall_seconds"]
    # training there retrains none of the committed runs ...
    main(swap)
    assert [p.name for p in other.iterdir() if p.is_dir()] == ["cps__1-16__seed1"]
    # ... and refuses to extend a table trained with other --set values
    k = swap.index("rampup_iters=0")
    with pytest.raises(KitError, match=f"{GRID}.json: its runs were trained with --set"):
        main(swap[:k - 1] + swap[k + 1:])
    # ... and never pairs runs that started from other backbone weights (another CPU pretrains other
    # weights from the same spec), nor from unknown ones (a table from before runs recorded theirs)
    csv = tmp_path / f"{GRID}.csv"
    good = csv.read_text()
    assert table2["backbone"].str.fullmatch("[0-9a-f]{12}").all() and table2["backbone"].nunique() == 1
    pd.read_csv(csv).assign(backbone="0123456789ab").to_csv(csv, index=False)
    with pytest.raises(KitError, match="started from backbone.s. 0123456789ab, the runs here from [0-9a-f]{12}; "):
        main(swap + ["--collect-only"])
    pd.read_csv(csv).drop(columns="backbone").to_csv(csv, index=False)
    with pytest.raises(KitError, match="started from backbone.s. unknown"):
        main(swap + ["--collect-only"])
    assert main(swap + ["--collect-only", "--name", "second"])["runs_finished"] == 1  # a second grid beside it
    assert ablate.committed_grid(folder=tmp_path, name="second")[0]["run"].tolist() == ["cps__1-16__seed1"]
    csv.write_text(good)
    # --fresh --collect-only tabulates the run folder alone, naming what is missing
    (tmp_path / "runs" / "first_release__1-16__seed1" / "metrics.json").unlink()
    capsys.readouterr()
    main(args + ["--collect-only", "--fresh"])
    assert "only 3 of 4 runs finished so far" in capsys.readouterr().out
    assert json.loads((tmp_path / f"{GRID}.json").read_text())["runs_finished"] == 3
    # a results table of another shape is named, not merged
    (tmp_path / f"{GRID}.csv").write_text("a,b\n1,2\n")
    bad = subprocess.run(cmd + ["--collect-only"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and f"{GRID}.csv: expected the columns" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_paired_differences_by_hand():
    t = pd.DataFrame({"variant": ["cpcl", "cpcl", "cpcl", "cps", "cps", "cps", "x"],
                      "labeled": ["1/16"] * 7, "seed": [0, 1, 2, 0, 1, 2, 0],
                      "miou": [0.50, 0.52, 0.51, 0.53, 0.52, 0.54, 0.40]})
    p = ablate.paired(t, "cpcl")
    assert p.loc[("cps", "1/16"), ["seed 0", "seed 1", "seed 2"]].tolist() == [3.0, 0.0, 3.0]
    assert p.loc[("cps", "1/16"), "mean"] == 2.0 and p.loc[("cps", "1/16"), "sd"] == round(3 ** 0.5, 2)
    # paired 95 % interval: 2 ± 4.3027 (t, 2 degrees of freedom) x sqrt(3) / sqrt(3)
    assert p.loc[("cps", "1/16"), ["95 % low", "95 % high"]].tolist() == [-2.3, 6.3]
    assert p.loc[("cps", "1/16"), "verdict"] == "not judged" and "floor" not in p  # no noise table given
    assert p.loc[("x", "1/16"), ["95 % low", "95 % high"]].isna().all()  # one seed: no interval
    floor = _noise_table(floor=1.5)  # the float order moved the pair by at most 1.5 points
    p = ablate.paired(t, "cpcl", noise_table=floor)
    assert p.loc[("cps", "1/16"), "verdict"] == "within the noise"  # one seed of 0.0: not every seed ahead
    assert p.loc[("cps", "1/16"), "floor"] == 1.5
    t.loc[4, "miou"] = 0.54  # seed 1 now +2
    assert ablate.paired(t, "cpcl", noise_table=floor).loc[("cps", "1/16"), "verdict"] == "ahead"  # 3, 2, 3 > 0; 2.67 > 1.5
    assert ablate.paired(t, "cpcl", noise_table=_noise_table(floor=3.0)).loc[("cps", "1/16"), "verdict"] == "within the noise"
    assert p.loc[("x", "1/16"), "seed 0"] == -10.0 and p.loc[("x", "1/16"), "verdict"] == "behind"  # -10 < -1.5
    assert ablate.paired(t[t["variant"] == "cpcl"], "cpcl").empty
    assert ablate.committed_grid("smoke", Path("/nonexistent")) is None


def _noise_table(floor: float):
    """A noise table whose every pair moved by exactly ``floor`` points between the float orders."""
    from cpcl_kit.experiments.noise import NoiseTable

    rows = [{"method": m, "seed": s, "threads": t, "miou": 0.5 + (floor / 100 if (m == "cpcl" and t == 2) else 0)}
            for m in ("supervised", "cps", "cpcl") for s in (0, 1, 2) for t in (1, 2)]
    return NoiseTable(pd.DataFrame(rows), {"preset": "x"})


def test_wall_seconds_count_overlapping_calls_once(monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_ablation_wall", ROOT / "benchmarks" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = [{"seconds": 100.0, "started": 1000.0}, {"seconds": 50.0, "started": 1080.0},  # 1000-1130
             {"seconds": 10.0, "started": 1010.0},  # inside the first
             {"seconds": 20.0, "started": 2000.0}, {"seconds": 7.0}]  # apart; no start: added
    assert mod.wall_seconds(calls) == 130.0 + 20.0 + 7.0
    assert mod.wall_seconds([]) == 0


def test_the_committed_grids_keep_their_cutmix_recipe_after_the_preset_dropped_it(monkeypatch, tmp_path):
    """Grids a-c were trained with the official CutMix, no student warp and train-mode teachers. The
    benchmark preset has since changed all three; ablation.py's RECIPE keeps its cells the runs the tables hold, and
    its default run folder is not the prepared set's (whose runs follow today's preset)."""
    main = in_process(monkeypatch)
    recipe, default_runs = main.__globals__["RECIPE"], main.__globals__["default_runs"]
    from cpcl_kit.config import make_config
    from cpcl_kit.typed import parse_sets
    from cpcl_kit.experiments import prepared

    official = make_config("voc")
    cell = ablate.run_config("cpcl", "1/16", 0, "benchmark", parse_sets(recipe))
    today = ablate.run_config("cpcl", "1/16", 0, "benchmark")
    fields = ("cutmix_boxes", "student_aug", "teacher_bn")
    assert [getattr(cell, f) for f in fields] == [getattr(official, f) for f in fields] == [3, "none", "train"]
    diff = {k for k, v in cell.to_dict().items() if today.to_dict()[k] != v}
    assert diff == set(fields)
    # the variants stay changes from that recipe: no_cutmix is CPCL with 0 boxes, not today's preset
    assert ablate.run_config("no_cutmix", "1/16", 0, "benchmark", parse_sets(recipe)).student_aug == "none"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CPCL_KIT_PREPARED", raising=False)
    monkeypatch.delenv("CPCL_KIT_CACHE", raising=False)  # (the tests point it elsewhere)
    assert default_runs("benchmark") == tmp_path / "cpcl-kit" / "ablation" / "benchmark"
    assert default_runs("benchmark") != prepared.default_dir("benchmark")
