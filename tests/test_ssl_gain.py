import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ssl_gain_benchmark_runs_and_writes_summary(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ssl_gain.py"), "--preset", "smoke", "--seeds", "0",
           "--set", "iterations=4", "--set", "sup_only_iters=1", "--set", "rampup_iters=0",
           "--runs", str(tmp_path / "runs"), "--results", str(tmp_path), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ssl_gain-smoke.json").read_text())
    for m in ("supervised", "cps", "cpcl"):
        assert len(summary[m]["miou"]) == 1 and 0 <= summary[m]["mean"] <= 1
    assert set(summary["goals"]) == {"paired_seeds", "cpcl_minus_supervised_points", "gain_goal_met",
                                     "cpcl_ge_cps", "cpcl_minus_cps_points"}
    assert summary["goals"]["paired_seeds"] == [0]
    assert "| cpcl |" in proc.stdout
    assert "| cpcl |" in (tmp_path / "ssl_gain-smoke.md").read_text()
    ends = summary["cpcl"]["pseudo_labels_end"]  # from the runs' histories
    assert 0 <= ends["agreement"][0] <= 1 and 0 <= ends["acc_union"][0] <= 1
    assert "cpcl pseudo labels at the end: agreement" in proc.stdout
    assert "pseudo_labels_end" not in summary["supervised"]
    # a second call finds every run finished and trains nothing
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.stdout.count("skipped") == 3
    # --collect-only summarises what is there without training; a missing method is said
    (tmp_path / "runs" / "cps__1-16__seed0" / "metrics.json").unlink()
    look = subprocess.run(cmd + ["--collect-only"], capture_output=True, text=True, timeout=120)
    assert look.returncode == 0, look.stderr[-2000:]
    assert "only 2 of 3 runs finished so far" in look.stdout and "training" not in look.stdout
    partial = json.loads((tmp_path / "ssl_gain-smoke.json").read_text())
    assert "cps" not in partial and partial["cpcl"]["miou"] == summary["cpcl"]["miou"]
