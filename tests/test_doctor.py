"""``python -m cpcl_kit doctor``: the report's facts (no timing is asserted), the batch search's
logic (with a stand-in for the GPU's memory limit) and the linear lr rule."""

import json
import types

import pytest
import torch

from cpcl_kit.cli import main
from cpcl_kit.config import make_config
from cpcl_kit.engine import doctor
from cpcl_kit.nets import pretrain


def test_the_cli_reports_a_presets_step_on_synthetic_batches(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--preset", "smoke", "--steps", "2", "--warmup", "1", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    cfg = make_config("smoke")
    st = r["steps"]
    assert (st["batch_size"], st["unlabeled_batch_size"], st["crop"]) == (cfg.batch_size, cfg.unlabeled_batch_size, cfg.crop)
    assert st["images_per_step"] == cfg.batch_size + 2 * cfg.unlabeled_batch_size and len(st["times_s"]) == 2
    assert st["images_per_s"] == pytest.approx(st["images_per_step"] / st["seconds_per_step"])
    assert st["seconds_per_step"] == pytest.approx(sorted(st["times_s"])[0] / 2 + sorted(st["times_s"])[1] / 2)
    assert st["peak_mem_mib"] >= 0 and st["mem_kind"].startswith("peak RSS growth")
    assert r["environment"]["torch"] == torch.__version__ and r["environment"]["device"] == "cpu"
    assert r["data"]["status"] == "embedded"
    shipped = pretrain.shipped_path(pretrain.spec_for(cfg))
    assert r["backbone_weights"] == {"status": "found", "path": str(shipped),
                                     "what": "the digit backbone shipped with the kit"}
    assert r["batch_search"] == {"skipped": "CUDA only"}
    assert r["lr"]["lr"] == cfg.lr and r["lr"]["batch_size"] == cfg.batch_size and "linear" in r["lr"]["rule"]
    for label in ("images per second", "peak memory (MiB)", "largest batch", "lr for that batch", "backbone weights"):
        assert label in printed


def test_a_supervised_step_counts_the_labeled_batch_only():
    cfg = make_config("smoke", method="supervised")
    r = doctor.diagnose(cfg, steps=1, warmup=0, progress=False)
    assert r["steps"]["images_per_step"] == cfg.batch_size and r["steps"]["unlabeled_batch_size"] == 0


def _search(monkeypatch, limit, base=8, **kw):
    """largest_batch against a stand-in GPU on which batches up to ``limit`` fit."""
    seen = []

    def fits(trainer, cfg, b, ub):
        seen.append((b, ub))
        return b <= limit, (10.0 * b if b <= limit else None)

    monkeypatch.setattr(doctor, "_fits", fits)
    stub = types.SimpleNamespace(device=torch.device("cpu"), opts=[])
    cfg = make_config("voc", batch_size=base, unlabeled_batch_size=base)
    return doctor.largest_batch(stub, cfg, progress=False, **kw), seen


def test_the_batch_search_doubles_then_bisects_to_within_an_eighth(monkeypatch):
    r, seen = _search(monkeypatch, 37)
    assert [b for b, _ in seen] == [8, 16, 32, 64, 48, 40, 36]
    assert r["largest"] == 36 and r["smallest_failing"] == 40 and r["exact"] and not r["capped"]
    assert r["largest"] <= 37 < r["largest"] + max(1, r["largest"] // 8) + 1
    assert [t["fits"] for t in r["tried"]] == [b <= 37 for b, _ in seen]


def test_the_batch_search_halves_when_the_presets_batch_does_not_fit(monkeypatch):
    r, seen = _search(monkeypatch, 5)
    assert [b for b, _ in seen] == [8, 4, 6, 5] and r["largest"] == 5 and r["exact"]
    r, _ = _search(monkeypatch, 1)
    assert r["largest"] is None and r["smallest_failing"] == 2


def test_the_batch_search_stops_at_its_cap_and_its_time_limit(monkeypatch):
    r, seen = _search(monkeypatch, 10_000)
    assert [b for b, _ in seen] == [8, 16, 32, 64] and r["largest"] == 64 and r["capped"] and not r["exact"]
    r, seen = _search(monkeypatch, 37, seconds=0.0)
    assert seen == [] and r["largest"] is None and not r["exact"]


def test_the_unlabeled_batches_scale_with_the_labeled_one(monkeypatch):
    seen = []
    monkeypatch.setattr(doctor, "_fits", lambda t, c, b, ub: (seen.append((b, ub)), (b <= 16, 1.0))[1])
    stub = types.SimpleNamespace(device=torch.device("cpu"), opts=[])
    doctor.largest_batch(stub, make_config("demo"), progress=False)  # 8 labeled + 4 + 4
    assert all(ub == max(2, round(b / 2)) for b, ub in seen)


def test_the_linear_rule_scales_the_presets_lr():
    cfg = make_config("voc")
    r = doctor.scaled_lr(cfg, 20)
    assert r["lr"] == pytest.approx(cfg.lr * 20 / cfg.batch_size)
    assert r["set"] == f"--set batch_size=20 --set unlabeled_batch_size=20 --set lr={cfg.lr * 20 / 8:.6g}"


def test_data_and_weights_found_or_missing(tmp_path):
    voc = make_config("voc")
    assert doctor.weights_status(voc)["status"] == "missing"  # the paper presets need weights
    assert doctor.weights_status(make_config("voc", backbone_weights="none"))["status"] == "random init"
    w = tmp_path / "r50.pth"
    assert doctor.weights_status(make_config("voc", backbone_weights=str(w)))["status"] == "missing"
    w.write_bytes(b"")
    assert doctor.weights_status(make_config("voc", backbone_weights=str(w)))["status"] == "found"
    assert doctor.data_status(voc)["status"] == "missing"
    root = tmp_path / "voc"
    assert "does not exist" in doctor.data_status(make_config("voc", data_root=str(root)))["what"]
    for d in ("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/SegmentationClassAug"):
        (root / d).mkdir(parents=True)
    assert doctor.data_status(make_config("voc", data_root=str(root)))["status"] == "found"


@pytest.mark.parametrize("args, names", [
    (["--preset", "nope"], "preset: unknown 'nope'"),
    (["--set", "batch_size=1"], "batch_size: expected at least 2"),
    (["--steps", "0"], "--steps: expected at least 1"),
    (["--out", "/nonexistent-folder/r.json"], "--out: folder /nonexistent-folder does not exist"),
    (["--set", "device=cuda:7"], "device: 'cuda:7' asked for"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, names, capsys):
    if "device=cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(["doctor", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err, err


def test_a_preset_batch_that_does_not_fit_is_reported_not_raised(monkeypatch):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(doctor, "time_steps", oom)
    r = doctor.diagnose(make_config("smoke"), steps=1, warmup=0, progress=False)
    assert r["steps"]["error"].startswith("out of memory at the preset's batch (CUDA out of memory.")
    assert "out of memory at the preset's batch" in doctor.table(r)
