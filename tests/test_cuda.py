"""The CUDA paths: device choice, autocast dtype, checkpoints from machines with more GPUs, and (on a
GPU) a whole training step without a host synchronisation. The CUDA-only tests skip on the CPU."""

import pytest
import torch

from cpcl_kit import registry
from cpcl_kit.config import make_config
from cpcl_kit.engine import checkpoint
from cpcl_kit.engine.synthetic import synthetic_batch
from cpcl_kit.engine.trainer import Trainer
from cpcl_kit.engine.device import amp_dtype, pick_device
from cpcl_kit.errors import KitError
from cpcl_kit.method.cpcl import cutmix_box_masks
from cpcl_kit.method.steps import ohem_ce

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fake_gpus(monkeypatch, n: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_a_bare_cuda_is_this_process_gpu(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit index is kept
    with pytest.raises(KitError, match=r"device: 'cuda:2' asked for, but this machine has 2 CUDA device"):
        pick_device("cuda", local_rank=2)


def test_auto_follows_the_environment_pin(monkeypatch):
    _fake_gpus(monkeypatch, 1)
    monkeypatch.setenv("CPCL_KIT_DEVICE", "cpu")
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.delenv("CPCL_KIT_DEVICE")
    assert pick_device("auto", local_rank=0) == torch.device("cuda", 0)


def test_amp_auto_counts_native_bf16_only(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert amp_dtype(cuda, "auto") == torch.float16  # emulated bf16 only: fp16 with a grad scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype(cuda, "auto") == torch.bfloat16

    def old_signature():  # a torch whose is_bf16_supported takes no keyword
        return False

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_signature)
    assert amp_dtype(cuda, "auto") == torch.float16


def test_a_checkpoint_with_cuda_rng_states_of_more_gpus_resumes_here(tmp_path):
    """Older checkpoints hold one CUDA RNG state per GPU of the machine that wrote them; training
    never uses the CUDA RNG, so they are not restored and a smaller machine resumes the run."""
    cfg = make_config("smoke", method="supervised", device="cpu")
    t = Trainer.create(cfg, torch.device("cpu"))
    state = checkpoint.make_state(cfg, 3, t.nets, t.opts, t.scaler, [])
    assert state["rng_cuda"] == []
    state["rng_cuda"] = [torch.zeros(16, dtype=torch.uint8) for _ in range(8)]
    torch.save(state, tmp_path / "ckpt.pt")
    t2 = Trainer.create(cfg, torch.device("cpu"))
    assert checkpoint.restore(checkpoint.load(tmp_path / "ckpt.pt"), t2.nets, t2.opts, t2.scaler)[0] == 3


def test_cutmix_mask_on_a_device_equals_the_cpu_one():
    masks = [cutmix_box_masks(3, (40, 56), generator=torch.Generator().manual_seed(5), device=d)
             for d in (None, "cpu")]
    assert torch.equal(*masks) and masks[0].device.type == "cpu"


def tiny_config(method="cpcl", device="cpu", **over):
    """A small run of the voc preset's recipe (CutMix with 3 boxes, OS16, SGD) that steps in a second;
    benchmarks/gpu_check.py checks the paper-size step."""
    base = dict(method=method, dataset="voc", backbone="resnet18", backbone_weights="none", crop=64,
                batch_size=2, unlabeled_batch_size=2, head_channels=16, output_stride=16, device=device,
                num_workers=0)
    return make_config("voc", **{**base, **over})


VARIANTS = {  # the paper recipe, the CPU presets' student view, and Cityscapes' OHEM loss
    "paper": {},
    "affine_no_cutmix": dict(cutmix_boxes=0, student_aug="affine", teacher_bn="eval"),
    "ohem_cityscapes": dict(dataset="cityscapes", sup_loss="ohem"),
    "channels_last": dict(channels_last=True),
}


def _steps(cfg, device, n, sync_mode=None):
    trainer = Trainer.create(cfg, device)
    batch = synthetic_batch(cfg, device)
    step = registry.method(cfg.method).step
    bad = torch.tensor(-1, device=device)
    trainer.step(step, batch, 0, lam=1.0)  # first call: lazy CUDA and cuDNN set-up may synchronise
    if sync_mode:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(sync_mode)
    try:
        for it in range(1, n):
            out = trainer.step(step, batch, it, lam=1.0)
            bad = torch.where((bad < 0) & ~torch.isfinite(out.loss.detach()), it, bad)
    finally:
        if sync_mode:
            torch.cuda.set_sync_debug_mode(0)
    return out, bad


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_step_variant_runs_on_the_cpu(variant):
    cfg = tiny_config(**VARIANTS[variant])
    out, bad = _steps(cfg, torch.device("cpu"), 2)
    assert torch.isfinite(out.loss) and int(bad) == -1


@needs_cuda
@pytest.mark.parametrize("method", ["supervised", "cps", "cpcl"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_training_step_on_cuda_never_waits_for_the_host(method, variant):
    """torch.cuda.set_sync_debug_mode("error") raises at any host synchronisation (a blocking copy,
    .item(), a data-dependent shape): the whole Trainer.step, optimizer included, has none."""
    cfg = tiny_config(method, "cuda", **VARIANTS[variant])
    out, bad = _steps(cfg, torch.device("cuda", 0), 3, sync_mode="error")
    assert torch.isfinite(out.loss).item() and bad.item() == -1


@needs_cuda
def test_cuda_pieces_match_the_cpu():
    g = torch.Generator().manual_seed(1)
    cpu = cutmix_box_masks(4, (64, 48), generator=g)
    gpu = cutmix_box_masks(4, (64, 48), generator=torch.Generator().manual_seed(1), device="cuda")
    assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu())
    logits = torch.randn(2, 19, 32, 32, generator=g)
    target = torch.randint(0, 19, (2, 32, 32), generator=g)
    a = ohem_ce(logits, target, min_kept=100)
    b = ohem_ce(logits.cuda(), target.cuda(), min_kept=100)
    assert torch.allclose(a, b.cpu(), atol=1e-5)


@pytest.mark.parametrize("aug", ["none", "affine"])
def test_channels_last_reaches_every_image_the_nets_see(aug):
    from cpcl_kit.method.steps import pseudo_labels
    from cpcl_kit.nets.deeplab import build_nets

    cfg = tiny_config("cpcl", channels_last=True, student_aug=aug)
    batch = synthetic_batch(cfg, torch.device("cpu"))
    for name in ("x_l", "u0", "u1"):
        assert getattr(batch, name).is_contiguous(memory_format=torch.channels_last), name
    nets = [net.to(memory_format=torch.channels_last) for net in build_nets(cfg)]
    view = pseudo_labels(nets, batch, cfg, torch.Generator().manual_seed(0)).image
    assert view.is_contiguous(memory_format=torch.channels_last)
