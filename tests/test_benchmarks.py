"""The speed benchmark's functions run at minimal sizes (a smoke test: no timing is asserted)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--backbone", "resnet18", "--crop", "32", "--batch", "2", "--head-channels", "8",
        "--output-stride", "16", "--classes", "11", "--steps", "1", "--warmup", "0", "--pairs", "1",
        "--pl-batch", "2", "--pl-classes", "5", "--pl-size", "16", "--pl-repeats", "1"]


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "benchmarks" / "speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    torch.set_num_threads(THREADS)  # parse_args sets the thread count: give the rest of the session its own


THREADS = torch.get_num_threads()


def test_cpu_defaults_are_the_small_ones(speed):
    args = speed.parse_args(["--device", "cpu"])
    assert (args.backbone, args.crop, args.batch, args.head_channels) == ("resnet18", 64, 4, 64)
    assert args.isolate and args.amp and args.threads == 1


def test_host_recipe_gives_the_kits_pseudo_labels(speed):
    g = torch.Generator().manual_seed(0)
    t1, t2 = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g)
    kit = speed.pseudo_supervision(t1, t2)
    for confusion in (speed._confusion_sklearn, speed._confusion_bincount):
        assert speed._same_outputs(kit, speed.reference_pseudo_labels(t1, t2, confusion))


def test_whole_benchmark_writes_json_and_table(speed, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed.main([*TINY, "--no-isolate", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["torch"] == torch.__version__ and "commit" in res
    assert res["args"]["crop"] == 32 and res["threads"] == 1
    assert [t["method"] for t in res["training"]] == ["supervised", "cps", "cpcl"]
    assert [t["images_per_step"] for t in res["training"]] == [2, 6, 6]
    for t in res["training"]:
        assert t["images_per_s"] > 0 and math.isfinite(t["peak_mem_mib"])
    assert res["overhead"]["ratio"] > 0
    assert all(res["pseudo_labels"]["outputs_match"].values())
    assert "skipped" in res["amp"]
    assert set(res["goals"]) == {"cpcl_overhead_ratio", "pseudo_label_speedup_cpu"}
    for g in res["goals"].values():
        assert isinstance(g["met"], bool) and g["value"] > 0
    table = capsys.readouterr().out
    assert "| train cpcl (fp32) |" in table and "CPCL overhead" in table and "| goal |" in table


def test_isolated_measurement_forwards_the_settings_to_a_child(speed, monkeypatch, capsys):
    """The child command line, run in-process here (a fresh interpreter would cost seconds)."""
    def fake_run(cmd, **kw):
        assert cmd[1].endswith("speed.py")
        assert speed.main(cmd[2:]) == 0
        return type("Done", (), {"returncode": 0, "stdout": capsys.readouterr().out, "stderr": ""})

    monkeypatch.setattr(speed.subprocess, "run", fake_run)
    res = speed.measure_training_isolated("cps", speed.parse_args([*TINY, "--isolate"]))
    assert res["method"] == "cps" and res["images_per_step"] == 6 and res["images_per_s"] > 0
    assert res["mem_kind"].endswith("fresh process") and res["peak_mem_mib"] >= 0
