"""Where a run computes and in which precision: the device, autocast, denormal flushing, batches
moved there."""

from __future__ import annotations

import os

import torch

from ..config import Config
from ..data.transforms import finish_images
from ..errors import KitError


# What device="auto" means when set (e.g. "cpu"): the test suite pins it, so that the CPU presets'
# exact-resume tests stay on the CPU on a machine with a GPU (CUDA kernels are not bit-reproducible).
AUTO_DEVICE_ENV = "CPCL_KIT_DEVICE"


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a ``device`` setting. ``auto``: $CPCL_KIT_DEVICE when set, else CUDA when
    present, else CPU. A bare ``cuda`` is this process's GPU, ``cuda:{local_rank}``, so torchrun's
    processes each take their own."""
    if name == "auto":
        name = os.environ.get(AUTO_DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise KitError(f"device: '{name}' asked for, but no CUDA device is available")
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if device.index >= torch.cuda.device_count():
        raise KitError(f"device: '{device}' asked for, but this machine has {torch.cuda.device_count()} "
                       f"CUDA device(s)")
    return device


def bf16_native() -> bool:
    """Whether the current GPU computes bf16 in hardware (Ampere and later). Emulated bf16 counts as
    supported for ``is_bf16_supported()`` by default, and would be slower than fp16 there."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch whose is_bf16_supported has no such keyword counts native support only
        return torch.cuda.is_bf16_supported()


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on a GPU that computes it natively, else fp16, and fp32
    (None) on CPU; ``bf16``/``fp16`` force one (bf16 autocast also runs on CPU); ``off`` is fp32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if bf16_native() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise KitError("amp: fp16 autocast needs a CUDA device; use amp=bf16 or amp=off on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def setup_device(cfg: Config, device: torch.device) -> torch.device:
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    else:
        # Denormal floats (|x| < 1.2e-38) appear as a CPU run converges, and the CPU computes with
        # them many times slower than with normal ones; flushed to zero, a step keeps its speed.
        torch.set_flush_denormal(True)
    return device


def batch_to(batch, device: torch.device, channels_last: bool = False):
    """``batch`` on ``device`` (asynchronous copies), finished there: masks int64 (they travel as
    uint8), images float and normalised (a training loader's crops travel as uint8,
    ``transforms.finish_images``); with ``channels_last`` every image tensor the nets see (labeled
    and both unlabeled batches) in that layout, as the nets are."""
    batch = batch.to(device)
    for name in ("y_l", "u0_mask", "u1_mask"):
        t = getattr(batch, name)
        if t is not None and t.dtype != torch.long:
            setattr(batch, name, t.long())
    for name in ("x_l", "u0", "u1"):
        t = getattr(batch, name)
        if t is not None:
            t = finish_images(t)
            setattr(batch, name, t.contiguous(memory_format=torch.channels_last) if channels_last else t)
    return batch
