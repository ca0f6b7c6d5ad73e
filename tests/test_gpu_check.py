"""benchmarks/gpu_check.py's own pieces (the whole check runs with --cpu-smoke, not in the suite)."""

import importlib.util
import json
from pathlib import Path

from cpcl_kit.data.voc import voc_splits

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_the_synthetic_voc_tree_is_read_by_the_kit(tmp_path):
    res = gpu_check.child_voc_data(tmp_path, True, tmp_path / "voc")
    size = gpu_check.SIZES["cpu"]
    lab, unlab, val = voc_splits(tmp_path / "voc", labeled=size["labeled"])
    assert res["ok"] and len(lab) == size["labeled"] and len(val) == size["val_images"]
    assert len(lab) + len(unlab) == size["train_images"] and all(m is not None for _, m in lab + val)


def test_the_module_blocker_hides_the_jupyter_tools(tmp_path):
    import subprocess
    import sys

    d = gpu_check._module_blocker(tmp_path)
    code = "import importlib.util as u, json; print(json.dumps([u.find_spec(m) is None for m in ('papermill', 'json')]))"
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(d)}, capture_output=True, text=True)
    assert json.loads(out.stdout) == [True, False], out.stderr


def test_goals_read_the_main_speed_figures():
    stages = {"speed": {"runs": {"main": {"figures": {"amp_speedup_cpcl": 2.1, "cpcl_overhead_ratio": 1.08}}}},
              "sync": {"ok": True}}
    g = gpu_check.goals(stages)
    assert g["bf16_amp_vs_fp32_cpcl"]["met"] and not g["cpcl_step_vs_bare_step"]["met"]
    assert g["no_host_sync_in_step"]["met"] and gpu_check.goals({})["no_host_sync_in_step"]["met"] is None


def test_the_suite_stage_names_its_failing_tests_in_json_and_markdown(tmp_path):
    log = "\n".join([
        "....F.E", "=========================== short test summary info ============================",
        "SKIPPED [1] tests/test_cuda.py:99: needs a CUDA device",
        "FAILED tests/test_train.py::test_resume[cpcl] - AssertionError: assert 1 == 2",
        "ERROR tests/test_runs.py::test_lock - OSError: [Errno 28] No space left | on device",
        "1 failed, 5 passed, 1 error in 3.00s"])
    failures = gpu_check.suite_failures(log)
    assert failures == [
        {"test": "tests/test_train.py::test_resume[cpcl]", "kind": "failed", "reason": "AssertionError: assert 1 == 2"},
        {"test": "tests/test_runs.py::test_lock", "kind": "error",
         "reason": "OSError: [Errno 28] No space left | on device"}]
    summary = {"stages": {"suite": {"ok": False, "summary": "1 failed, 5 passed, 1 error in 3.00s",
                                    "failures": failures, "seconds": 9.0}}}
    path = tmp_path / "gpu-check.json"
    path.write_text(json.dumps(summary))
    md = gpu_check.render(path).read_text()
    assert "| `tests/test_train.py::test_resume[cpcl]` | failed | AssertionError: assert 1 == 2 |" in md
    assert "No space left / on device" in md  # a | in a reason cannot break the table
    assert gpu_check.suite_failures("5 passed in 1.00s") == []

