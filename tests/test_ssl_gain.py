import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
    """benchmarks/ssl_gain.py, imported (no interpreter start per call)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ssl_gain", ROOT / "benchmarks" / "ssl_gain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ssl_gain_benchmark_runs_and_writes_summary(tmp_path, capsys):
    """The script end to end once in its own interpreter, then in-process calls."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ssl_gain.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "iterations=4", "--set", "sup_only_iters=1", "--set", "rampup_iters=0",
           "--runs", str(tmp_path / "runs"), "--results", str(tmp_path), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ssl_gain-smoke.json").read_text())
    for m in ("supervised", "cps", "cpcl", "full"):
        assert len(summary[m]["miou"]) == 1 and 0 <= summary[m]["mean"] <= 1
    assert (tmp_path / "runs" / "supervised__all__seed0" / "metrics.json").exists()  # full: every scene labeled
    full_cfg = json.loads((tmp_path / "runs" / "supervised__all__seed0" / "config.json").read_text())
    assert full_cfg["labeled"] == "all" and full_cfg["method"] == "supervised"
    paired = summary["paired"]
    assert paired["seeds"] == [0]
    # the paired differences are the members' mIoU differences, in points
    want = round(100 * (summary["cpcl"]["miou"][0] - summary["supervised"]["miou"][0]), 2)
    assert abs(paired["cpcl_minus_supervised"]["per_seed"][0] - want) < 0.02
    assert set(paired) == {"seeds", "cpcl_minus_supervised", "cps_minus_supervised", "cpcl_minus_cps"}
    assert "targets" not in summary  # measurements only: the goals are benchmarks/README.md's
    assert summary["grid_wall_seconds"] > 0 and summary["commit"] and "ssl_gain.py" in summary["command"]
    # as a user types it in a clone: tmp_path is this machine's folder, named by its option
    assert summary["command"].startswith("python benchmarks/ssl_gain.py --preset smoke")
    assert summary["command"].endswith("--runs <runs> --results <results> --quiet")
    assert len(summary["cpcl"]["miou_net2"]) == 1
    assert len(summary["full"]["per_class_iou"][0]) == 11 and summary["class_names"][0] == "background"
    # the CPCL run keeps stage snapshots for notebook 08 (the prepared set)
    assert list((tmp_path / "runs" / "cpcl__1-16__seed0" / "stages").glob("iter_*.pt"))
    assert "| cpcl |" in proc.stdout
    assert "| cpcl |" in (tmp_path / "ssl_gain-smoke.md").read_text()
    ends = summary["cpcl"]["pseudo_labels_end"]  # from the runs' histories
    assert 0 <= ends["agreement"][0] <= 1 and 0 <= ends["acc_union"][0] <= 1
    assert "cpcl pseudo labels at the end: agreement" in proc.stdout
    assert "pseudo_labels_end" not in summary["supervised"]
    # a second call finds every run finished and trains nothing
    main = _module().main
    capsys.readouterr()
    main(cmd[2:])
    assert capsys.readouterr().out.count("skipped") == 4
    # --collect-only summarises what is there without training; a missing method is said
    (tmp_path / "runs" / "cps__1-16__seed0" / "metrics.json").unlink()
    main(cmd[2:] + ["--collect-only"])
    look = capsys.readouterr().out
    assert "only 3 of 4 runs finished so far" in look and "training" not in look
    partial = json.loads((tmp_path / "ssl_gain-smoke.json").read_text())
    assert "cps" not in partial and partial["cpcl"]["miou"] == summary["cpcl"]["miou"]


def test_committed_results_hold_measurements_not_goals():
    """The committed ssl_gain and noise results: no goal, target or met flag beside the numbers, and
    the markdown states the verdicts with their paired interval."""
    results = ROOT / "benchmarks" / "results"

    def keys(x):
        if isinstance(x, dict):
            return set(x) | set().union(*(keys(v) for v in x.values()))
        return set().union(*(keys(v) for v in x)) if isinstance(x, list) else set()

    for name in ("ssl_gain-benchmark", "noise-benchmark"):
        data = json.loads((results / f"{name}.json").read_text())
        found = keys({k: v for k, v in data.items() if k != "config"})  # (a config's "targets" is a setting)
        assert not found & {"targets", "goal", "met"}, name
        assert "Target" not in (results / f"{name}.md").read_text() and "goal" not in (results / f"{name}.md").read_text()
    md = (results / "ssl_gain-benchmark.md").read_text()
    assert md.count("paired 95 % interval") == 3 and ("cannot tell at" in md or "is ahead on every seed" in md)


def test_the_summary_is_rewritten_from_its_json(tmp_path):
    """write_summary renders a summary without retraining: the committed one gives its own tables back."""
    mod = _module()
    summary = json.loads((ROOT / "benchmarks" / "results" / "ssl_gain-benchmark.json").read_text())
    mod.write_summary(summary, tmp_path, "0,1,2", noise_from=ROOT / "benchmarks" / "results")
    committed = (ROOT / "benchmarks" / "results" / "ssl_gain-benchmark.md").read_text()
    assert (tmp_path / "ssl_gain-benchmark.md").read_text() == committed
