"""Training steps on synthetic batches: a run's batch shapes without its data set.

``doctor`` (can this machine train this preset, how fast, how large a batch fits) and
``benchmarks/speed.py`` both time the training loop's own ``Trainer.step`` on random images and
labels of a Config's sizes, with the device synchronised around each timed step, and read the peak
memory the steps took: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the growth of the
process's peak resident set size (every allocation of the process, allocator caches included, so
coarser than the CUDA figure).
"""

from __future__ import annotations

import itertools
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from .. import registry
from ..constants import IGNORE_INDEX
from ..data.loaders import Batch
from .device import batch_to


def synthetic_batch(cfg, device: torch.device, seed: int = 0) -> Batch:
    """Random normalised images and labels of ``cfg``'s sizes: x_l [batch_size, 3, crop, crop],
    y_l [batch_size, crop, crop] (two rows ignored, as padded crops have), u0 and u1
    [unlabeled_batch_size, 3, crop, crop], on ``device`` in the nets' memory layout."""
    g = torch.Generator().manual_seed(seed)
    b, bu, s = cfg.batch_size, cfg.unlabeled_batch_size, cfg.crop
    x_l = torch.randn(b, 3, s, s, generator=g)
    u0, u1 = (torch.randn(bu, 3, s, s, generator=g) for _ in range(2))
    y = torch.randint(0, cfg.num_classes, (b, s, s), generator=g)
    y[:, :2] = IGNORE_INDEX
    return batch_to(Batch(x_l=x_l, y_l=y, u0=u0, u1=u1), device, cfg.channels_last)


def images_per_step(cfg) -> int:
    """Images one iteration processes: the labeled batch, plus u0 and u1 for the semi-supervised methods."""
    return cfg.batch_size + (2 * cfg.unlabeled_batch_size if registry.method(cfg.method).unlabeled else 0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call of ``fn``, synchronised on CUDA."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB: VmHWM (Linux, resettable by ``reset_peak_rss``),
    else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``), so that a
    later peak belongs to what ran since; False where that is not possible (the peak then counts
    the whole process so far, and a growth from it is a lower bound)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as mem: ...``; then ``mem.mib`` is the peak memory the block added
    (CUDA: max_memory_allocated above what was allocated at the start; CPU: peak RSS growth),
    ``mem.total_mib`` the peak itself (what was there before included) and ``mem.kind`` says which."""

    def __init__(self, device: torch.device):
        self.device, self.mib, self.total_mib, self.kind = device, None, None, None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            exact = reset_peak_rss()
            self.base = peak_rss_mib()
            self.kind = "peak RSS growth" + ("" if exact else " (lower bound: peak not resettable here)")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.total_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.mib = self.total_mib - self.base / 2**20
        else:
            self.total_mib = peak_rss_mib()
            self.mib = self.total_mib - self.base


def time_steps(trainer, step_fn, batch, steps: int, warmup: int, lam: float | None = None,
               on_step=None) -> dict:
    """``warmup`` untimed then ``steps`` timed iterations of ``trainer.step`` on ``batch`` (λ =
    ``lam``, default the config's full ``unsup_weight``: the whole semi-supervised step, also where
    the preset starts supervised only). Returns the wall and CPU seconds of each timed step, their
    medians, the warm-up's seconds and images per second (from the wall median). ``on_step()`` is
    called after every step (a progress bar's update)."""
    lam = trainer.cfg.unsup_weight if lam is None else lam
    its = itertools.count()
    on_step = on_step or (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.step(step_fn, batch, next(its), lam)
        on_step()
    sync(trainer.device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        times.append(timed(lambda: trainer.step(step_fn, batch, next(its), lam), trainer.device))
        on_step()
    med = statistics.median(t[0] for t in times)
    return {"warmup_s": warm, "times_s": [t[0] for t in times], "cpu_times_s": [t[1] for t in times],
            "median_s": med, "cpu_median_s": statistics.median(t[1] for t in times),
            "images_per_step": images_per_step(trainer.cfg), "images_per_s": images_per_step(trainer.cfg) / med}


def one_thread_steps(preset: str, seconds: float, start_at: float, method: str = "supervised") -> dict:
    """``preset``'s ``method`` step on one torch thread on the CPU, on a synthetic batch, stepped for
    ``seconds`` from the wall-clock time ``start_at`` (``time.time()``): processes given the same
    ``start_at`` step at the same time (``benchmarks/speed.py`` measures how much two one-thread
    processes slow each other). Returns the median seconds of a step (``s_per_step``) and the
    wall-clock times the timed steps began and ended (``began``, ``ended``), to check the overlap."""
    from ..config import make_config
    from .trainer import Trainer

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cpu = torch.device("cpu")
    cfg = make_config(preset, method=method, device="cpu", net_threads=False)
    trainer, step_fn = Trainer.create(cfg, cpu), registry.method(method).step
    batch = synthetic_batch(cfg, cpu)
    for _ in range(3):
        trainer.step(step_fn, batch, cfg.iterations - 1)
    time.sleep(max(0.0, start_at - time.time()))
    began, times, end = time.time(), [], time.perf_counter() + seconds
    while time.perf_counter() < end or not times:
        t0 = time.perf_counter()
        trainer.step(step_fn, batch, cfg.iterations - 1)
        times.append(time.perf_counter() - t0)
    return {"s_per_step": statistics.median(times), "began": began, "ended": time.time()}
