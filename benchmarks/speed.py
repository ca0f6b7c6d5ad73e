"""Speed benchmark: training throughput and memory, CPCL overhead, pseudo-label block, AMP.

    python benchmarks/speed.py                     # defaults for the device found (CPU or CUDA)
    python benchmarks/speed.py --backbone resnet50 --crop 512 --batch 8 --head-channels 256
    python benchmarks/speed.py --methods cpcl --sections training --compile   # one method, compiled nets

Prints a markdown table and writes ``benchmarks/results/speed-<device>.json``. Every figure is the
median of ``--steps`` (or ``--pairs`` / ``--pl-repeats``) individually timed repeats after
``--warmup`` untimed ones; on CUDA the timings synchronise before and after. The goals are checked
here (and recorded in the JSON), never asserted in the tests:

- CPCL overhead: CPCL step / bare step with the same passes and plain CE on fixed targets <= 1.05;
- pseudo-label block (``pseudo_supervision``) vs the official host-side recipe: >= 5x at B=8, C=21,
  128x128 on the CPU (the GPU figure is reported, no goal);
- AMP vs fp32 images/s for the CPCL step (CUDA only): >= 1.8x for ResNet-50 at 512x512;
- make demo's training alone, scheduled perfectly on this CPU's cores (``demo``, CPU only): at most
  make demo's own goal, 300 s (``timing.py``).

Memory: on CUDA the peak ``torch.cuda.max_memory_allocated`` of each method (nets, gradients,
optimizer state, activations). On the CPU the growth of the process's peak resident set size
(VmHWM, i.e. ``ru_maxrss``; ``cpcl_kit.engine.synthetic.peak_rss_mib``) from before the nets are built to the end of the
timed steps; each method is measured in a fresh interpreter (``--isolate``, the CPU default) so that
one method's high-water mark does not hide the next one's. RSS counts every allocation of the
process (allocator caches included), so it is coarser than the CUDA figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing the kit
    sys.path.insert(0, str(ROOT))

from cpcl_kit import registry  # noqa: E402
from cpcl_kit.config import make_config  # noqa: E402
from cpcl_kit.constants import IGNORE_INDEX as IGNORE  # noqa: E402
from cpcl_kit.data.loaders import Batch  # noqa: E402
from cpcl_kit.engine.device import pick_device  # noqa: E402
from cpcl_kit.engine.synthetic import (one_thread_steps, peak_rss_mib, synthetic_batch, time_steps,  # noqa: E402
                                      timed)
from cpcl_kit.engine.trainer import Trainer  # noqa: E402
from cpcl_kit.files import machine, write_json  # noqa: E402
from cpcl_kit.method.cpcl import pseudo_supervision  # noqa: E402
from cpcl_kit.method.steps import StepOut, sup_loss  # noqa: E402
from cpcl_kit.provenance import code_version, recorded_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

GOAL_OVERHEAD = 1.05      # CPCL step / bare step, at most
GOAL_PSEUDO_CPU = 5.0     # pseudo-label block speed-up over the host-side recipe, at least (CPU)
GOAL_AMP = 1.8            # AMP / fp32 images per second, at least (CUDA, ResNet-50 at 512x512)
GOAL_DEMO_S = 300.0       # make demo on a fresh 2-core clone, without the install, at most (timing.GOALS)

SECTIONS = ("training", "overhead", "pseudo", "amp", "limit", "eval", "demo")

DEFAULTS = {
    # One CPU thread by default: on a shared machine, OpenMP threads spin-waiting for busy cores made
    # 2-thread steps 10-20x slower than 1-thread ones (measured); pass --threads to use more.
    "cpu": dict(backbone="resnet18", crop=64, batch=4, head_channels=64, output_stride=8,
                steps=5, warmup=2, pairs=11, threads=1),
    "cuda": dict(backbone="resnet50", crop=512, batch=8, head_channels=256, output_stride=16,
                 steps=10, warmup=3, pairs=10, threads=0),
}


# ------------------------------------------------------------------------------------------------
# arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--backbone", help="default: resnet18 on CPU, resnet50 on CUDA")
    p.add_argument("--crop", type=int, help="square crop side; default 64 on CPU, 512 on CUDA")
    p.add_argument("--batch", type=int, help="labeled images per step, and images in each of u0, u1; "
                                             "default 4 on CPU, 8 on CUDA")
    p.add_argument("--head-channels", type=int, help="ASPP/decoder width; default 64 CPU, 256 CUDA")
    p.add_argument("--output-stride", type=int, choices=(8, 16),
                   help="default 8 on CPU (as the CPU presets), 16 on CUDA (paper)")
    p.add_argument("--classes", type=int, default=21, help="number of classes (VOC: 21)")
    p.add_argument("--steps", type=int, help="timed training steps per method (median reported)")
    p.add_argument("--warmup", type=int, help="untimed training steps before timing")
    p.add_argument("--pairs", type=int, help="interleaved (bare, CPCL) step pairs for the overhead")
    p.add_argument("--threads", type=int, help="torch CPU threads; default 1 on CPU, 0 = torch's default")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="train in fp32 on CUDA (default: autocast, as the training loop)")
    p.add_argument("--channels-last", action="store_true", help="as the config switch")
    p.add_argument("--methods", default=",".join(registry.method_names()), help="comma-separated methods of the training table")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated measurements to run: " + ", ".join(SECTIONS))
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the nets the step calls, compiled during the warm-up steps "
                        "(backend: inductor unless named, e.g. eager for a quick check of the path)")
    p.add_argument("--tf32", choices=("default", "on", "off"), default="default",
                   help="CUDA fp32 convolutions and matmuls in TF32 (on), in full fp32 (off), or torch's "
                        "defaults; the JSON records which ran")
    p.add_argument("--pl-batch", type=int, default=8, help="pseudo-label block: batch")
    p.add_argument("--pl-classes", type=int, default=21, help="pseudo-label block: classes")
    p.add_argument("--pl-size", type=int, default=128, help="pseudo-label block: square side")
    p.add_argument("--pl-repeats", type=int, default=20, help="pseudo-label block: timed repeats")
    p.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                   help="measure each method in a fresh interpreter (default on CPU, for RSS)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument("--limit-rounds", type=int, default=12, help="limit section: timed rounds of the four ways")
    p.add_argument("--eval-rounds", type=int, default=3, help="eval section: timed rounds of each batch size")
    p.add_argument("--eval-scenes", type=int, help="eval section: validation scenes (default the demo preset's)")
    p.add_argument("--demo-iterations", type=int, default=20,
                   help="demo section: timed iterations of each phase of each run make demo trains")
    p.add_argument("--demo-pair-seconds", type=float, default=10.0,
                   help="demo section: seconds of one-thread steps, alone and two processes at once")
    p.add_argument("--demo-rounds", type=int, default=3, help="demo section: rounds of those, in turn")
    p.add_argument("--demo-scenes", type=int,
                   help="demo section: training scenes (and validation scenes; default the demo preset's)")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/speed-<device>.json)")
    p.add_argument("--child-method", choices=registry.method_names(), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    bad = [m for m in args.methods if m not in registry.method_names()] + [x for x in args.sections if x not in SECTIONS]
    if bad or not args.methods:
        p.error(f"--methods/--sections: unknown {', '.join(bad) or 'empty list'} "
                f"(methods: {', '.join(registry.method_names())}; sections: {', '.join(SECTIONS)})")
    set_tf32(args.tf32)
    return fill_defaults(args, pick_device(args.device))


def set_tf32(mode: str) -> dict:
    """Set (``on``/``off``) or keep (``default``) TF32 for CUDA fp32 convolutions and matmuls; returns
    the settings in force. torch's defaults are TF32 convolutions and full-fp32 matmuls, so an "fp32"
    figure with the defaults is partly TF32."""
    if mode != "default":
        torch.backends.cudnn.allow_tf32 = mode == "on"
        torch.backends.cuda.matmul.allow_tf32 = mode == "on"
    return tf32_state()


def tf32_state() -> dict:
    return {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32),
            "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def fill_defaults(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the device-dependent defaults that were not given."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    for key, value in DEFAULTS[kind].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if getattr(args, "isolate", None) is None:
        args.isolate = device.type == "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"


# ------------------------------------------------------------------------------------------------
# timing helpers


def ratio_clock(device: torch.device) -> str:
    """The clock the ratios (goals) use: process CPU time on the CPU, where it is robust to other
    jobs competing for the cores (a wall-clock ratio of two noisy medians is not); wall time on CUDA."""
    return "cpu" if device.type == "cpu" else "wall"


def _median(timings, clock: str) -> float:
    return statistics.median(t[0 if clock == "wall" else 1] for t in timings)


# ------------------------------------------------------------------------------------------------
# training steps


def bench_config(args, method: str, device: torch.device, amp: bool | None = None):
    """The Config of one measurement: paper-layout nets at the benchmark's sizes; ``amp`` None
    follows ``--no-amp`` (autocast as the training loop by default, which is fp32 on the CPU)."""
    counts = {registry.dataset(d).num_classes: d for d in registry.dataset_names() if registry.dataset(d).classes}
    dataset = counts.get(args.classes)
    if dataset is None:
        raise SystemExit(f"--classes: expected the class count of a data set ({', '.join(map(str, counts))}), "
                         f"got {args.classes}")
    return make_config("voc", method=method, dataset=dataset, backbone=args.backbone,
                       output_stride=args.output_stride, head_channels=args.head_channels,
                       crop=args.crop, batch_size=args.batch, unlabeled_batch_size=args.batch,
                       device=str(device), amp="auto" if (args.amp if amp is None else amp) else "off",
                       channels_last=args.channels_last, sup_loss="ce")


def new_trainer(cfg, device: torch.device) -> Trainer:
    """The training loop's own ``Trainer`` (nets, optimizers, scaler, one iteration as ``train``
    runs it, lr schedule included)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    return Trainer.create(cfg, device)


def measure_training(method: str, args, device: torch.device, amp: bool | None = None) -> dict:
    """Median seconds per training iteration, images/s and peak memory of one method."""
    cfg = bench_config(args, method, device, amp)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = peak_rss_mib()
    trainer = new_trainer(cfg, device)
    if getattr(args, "compile", False):
        trainer.models = [torch.compile(m, backend=args.compile) for m in trainer.models]
    batch = synthetic_batch(cfg, device)
    # the full semi-supervised step (lambda = unsup_weight > 0), as doctor times it
    timing = time_steps(trainer, registry.method(method).step, batch, args.steps, args.warmup)
    res = {"method": method, "amp": str(trainer.dtype).replace("torch.", "") if trainer.dtype else "fp32",
           "channels_last": cfg.channels_last, "compiled": getattr(args, "compile", None) or False,
           **{k: timing[k] for k in ("warmup_s", "images_per_step", "median_s", "images_per_s",
                                      "cpu_median_s", "times_s", "cpu_times_s")}}
    if device.type == "cuda":
        res["peak_mem_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        res["mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        peak = peak_rss_mib()
        res["peak_mem_mib"] = peak - base
        res["peak_rss_mib"] = peak
        res["mem_kind"] = ("ru_maxrss growth, fresh process" if getattr(args, "child_method", None)
                           else "ru_maxrss growth, shared process (lower bound)")
    del trainer, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def measure_training_isolated(method: str, args) -> dict:
    """``measure_training`` in a fresh interpreter (so ru_maxrss belongs to this method alone)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-method", method,
           "--device", args.device, "--backbone", args.backbone, "--crop", str(args.crop),
           "--batch", str(args.batch), "--head-channels", str(args.head_channels),
           "--output-stride", str(args.output_stride), "--classes", str(args.classes),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if not args.amp:
        cmd.append("--no-amp")
    if args.channels_last:
        cmd.append("--channels-last")
    if args.compile:
        cmd += ["--compile", args.compile]
    cmd += ["--tf32", args.tf32]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child for {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# CPCL overhead: a CPCL step vs a bare step with the same passes


def bare_step(nets, batch: Batch, cfg, lam: float, gen, *, u_mix: torch.Tensor, target: torch.Tensor):
    """The passes of a CPCL step without CPCL: per net, labeled fwd/bwd, no-grad passes on u0 and u1,
    fwd/bwd on a (fixed) mixed image with plain CE on fixed targets. No CutMix, no pseudo-labels,
    no indicator, no weights."""
    net1, net2 = nets
    s1, s2 = sup_loss(cfg, net1(batch.x_l), batch.y_l), sup_loss(cfg, net2(batch.x_l), batch.y_l)
    with torch.no_grad():
        for net in nets:
            net(batch.u0)
            net(batch.u1)
    u1 = F.cross_entropy(net1(u_mix).float(), target, ignore_index=IGNORE)
    u2 = F.cross_entropy(net2(u_mix).float(), target, ignore_index=IGNORE)
    return StepOut(s1 + s2 + lam * (u1 + u2))


def measure_overhead(args, device: torch.device) -> dict:
    """Median seconds of interleaved (bare, CPCL) steps on the same nets and batch, and their ratio."""
    cfg = bench_config(args, "cpcl", device)
    trainer = new_trainer(cfg, device)
    batch = synthetic_batch(cfg, device)
    g = torch.Generator().manual_seed(1)
    u_mix = batch.u0.clone()
    target = torch.randint(0, cfg.num_classes, batch.y_l.shape, generator=g).to(device)

    def bare(nets, b, c, lam, gen, all_reduce=None, par=None):
        return bare_step(nets, b, c, lam, gen, u_mix=u_mix, target=target)

    cpcl = registry.method("cpcl").step
    its, lam = itertools.count(), cfg.unsup_weight
    for _ in range(args.warmup):
        trainer.step(bare, batch, next(its), lam)
        trainer.step(cpcl, batch, next(its), lam)
    t_bare, t_cpcl = [], []
    for i in range(args.pairs):  # alternate the order so drifts in machine load hit both alike
        order = [(bare, t_bare), (cpcl, t_cpcl)]
        for fn, sink in (order if i % 2 == 0 else order[::-1]):
            sink.append(timed(lambda: trainer.step(fn, batch, next(its), lam), device))
    res = {"clock": ratio_clock(device)}
    for clock in ("wall", "cpu"):
        res[clock] = {"bare_median_s": _median(t_bare, clock), "cpcl_median_s": _median(t_cpcl, clock),
                      "ratio": _median(t_cpcl, clock) / _median(t_bare, clock),
                      "bare_times_s": [t[clock == "cpu"] for t in t_bare],
                      "cpcl_times_s": [t[clock == "cpu"] for t in t_cpcl]}
    res["ratio"] = res[res["clock"]]["ratio"]
    res["pairs"] = len(t_bare)
    return res


# ------------------------------------------------------------------------------------------------
# pseudo-label block: kit vs the official host-side recipe


def _confusion_bincount(a: np.ndarray, b: np.ndarray, c: int) -> np.ndarray:
    return np.bincount(a * c + b, minlength=c * c).reshape(c, c)


def _confusion_sklearn(a: np.ndarray, b: np.ndarray, c: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix
    return confusion_matrix(a, b)


def reference_pseudo_labels(teacher1: torch.Tensor, teacher2: torch.Tensor, confusion=_confusion_sklearn,
                            ignore_index: int = IGNORE) -> dict:
    """Straightforward host-side version, with the official code's calls: labels and confidences
    with ``torch.max`` on the device, labels to the host as numpy, the confusion matrix there with
    the class list appended to both label vectors, the indicator in numpy, then the labels and
    weights built back on the device."""
    device = teacher1.device
    c = teacher1.shape[1]
    z1, z2 = teacher1.detach().float(), teacher2.detach().float()
    _, y1 = torch.max(z1, dim=1)
    _, y2 = torch.max(z2, dim=1)
    # The official code takes torch.max(F.softmax(z, dim=-1)), a single scalar; the method (and the
    # kit) use the per-pixel max over classes, which is what is built here.
    conf1, _ = torch.max(torch.softmax(z1, dim=1), dim=1)
    conf2, _ = torch.max(torch.softmax(z2, dim=1), dim=1)
    a = y1.cpu().numpy().ravel()
    b = y2.cpu().numpy().ravel()
    classes = np.arange(c)
    n = confusion(np.concatenate([a, classes]), np.concatenate([b, classes]), c).astype(np.float64)
    diag = np.diag(n)
    rows, cols = n.sum(axis=1), n.sum(axis=0)
    ind = (cols - diag) / cols + (rows - diag) / rows
    ind = ind / (ind.sum() + 1e-6)
    ind_t = torch.from_numpy(ind).to(device)
    agree = y1 == y2
    take1 = ind_t[y1] > ind_t[y2]
    union = torch.where(take1, y1, y2)
    inter = torch.where(agree, y1, torch.full_like(y1, ignore_index))
    w_inter = (conf1 + conf2) / 2
    w_union = torch.where(agree, w_inter, torch.where(take1, conf1, conf2))
    return {"y1": y1, "y2": y2, "indicator": ind_t, "inter": inter, "union": union,
            "w_inter": w_inter, "w_union": w_union}


def _same_outputs(kit, ref: dict) -> bool:
    eq = all(torch.equal(getattr(kit, k), ref[k]) for k in ("y1", "y2", "inter", "union"))
    close = all(torch.allclose(getattr(kit, k), ref[k]) for k in ("indicator", "w_inter", "w_union"))
    return eq and close


def measure_pseudo_labels(device: torch.device, batch: int = 8, classes: int = 21, size: int = 128,
                          repeats: int = 20, warmup: int = 3) -> dict:
    """Median seconds of ``pseudo_supervision`` and of the host-side recipe (sklearn confusion_matrix,
    as the official code; and np.bincount, a faster host-side variant), interleaved."""
    g = torch.Generator().manual_seed(2)
    shape = (batch, classes, size, size)
    t1 = (3 * torch.randn(shape, generator=g)).to(device)
    t2 = (3 * torch.randn(shape, generator=g)).to(device)
    fns = {
        "kit": lambda: pseudo_supervision(t1, t2),
        "host_sklearn": lambda: reference_pseudo_labels(t1, t2, _confusion_sklearn),
        "host_bincount": lambda: reference_pseudo_labels(t1, t2, _confusion_bincount),
    }
    kit = fns["kit"]()
    match = {k: _same_outputs(kit, fns[k]()) for k in ("host_sklearn", "host_bincount")}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    res = {"shape": list(shape), "clock": ratio_clock(device), "outputs_match": match}
    for clock in ("wall", "cpu"):
        med = {k: _median(v, clock) for k, v in times.items()}
        res[clock] = {"kit_median_s": med["kit"], "host_sklearn_median_s": med["host_sklearn"],
                      "host_bincount_median_s": med["host_bincount"],
                      "speedup_vs_sklearn": med["host_sklearn"] / med["kit"],
                      "speedup_vs_bincount": med["host_bincount"] / med["kit"],
                      "times_s": {k: [t[clock == "cpu"] for t in v] for k, v in times.items()}}
    res["speedup_vs_sklearn"] = res[res["clock"]]["speedup_vs_sklearn"]
    res["speedup_vs_bincount"] = res[res["clock"]]["speedup_vs_bincount"]
    return res


# ------------------------------------------------------------------------------------------------
# the whole run


# ------------------------------------------------------------------------------------------------
# the demo preset's step against the CPU's own limit


def conv_gflops(threads: int, repeats: int = 15) -> float:
    """GFLOP/s of a decoder-shaped 3x3 convolution (the demo nets' most common kind) with ``threads``
    torch threads: the arithmetic rate this CPU reaches on the step's main work."""
    x, w = torch.randn(8, 112, 16, 16), torch.randn(64, 112, 3, 3)
    flops = 2 * x.shape[0] * w.shape[0] * 16 * 16 * w.shape[1] * 9
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(3):
            F.conv2d(x, w, padding=1)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            F.conv2d(x, w, padding=1)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return flops / statistics.median(times) / 1e9


def step_gflop(trainer: Trainer, step_fn, batch, lam: float) -> float:
    """GFLOP of one training step (forward and backward), counted by torch's FlopCounterMode; the
    nets taken in turn, since a dispatch mode sees only its own thread."""
    from torch.utils.flop_counter import FlopCounterMode

    from cpcl_kit.method.variants import each

    par, trainer.par = trainer.par, each
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.step(step_fn, batch, 1000, lam)
    finally:
        trainer.par = par
    return counter.get_total_flops() / 1e9


def plain_optimizers(trainer: Trainer) -> list:
    """The plain step's optimizers for ``trainer``'s nets: Adam's per-tensor (foreach) update, not the
    kit's fused one; the same groups and lr."""
    from cpcl_kit.engine.trainer import param_groups

    cfg = trainer.cfg
    return [torch.optim.Adam(param_groups(n, cfg.weight_decay), lr=cfg.lr, foreach=True) for n in trainer.nets]


def measure_limit(method: str, rounds: int = 12, warmup: int = 3, block: int = 2) -> dict:
    """The demo preset's ``method`` step with the unsupervised loss on, four ways on the same batch,
    interleaved (each visit an untimed step, then ``block`` timed ones): the plain step (the nets
    in turn on one torch thread, every ASPP branch computed as written, Adam's per-tensor update),
    the kit's step on one thread (ASPP folded on the small map, fused Adam), each net on its own
    thread (``net_threads``), and the nets in turn on all cores' torch threads. With the step's
    FLOPs (the kit's) and the convolution rate of one thread and of all cores: each time against
    the time that rate allows (the ratio; 1 would be every FLOP at the convolution's own rate), and
    each speed-up over the plain step."""
    from cpcl_kit.engine.trainer import on_threads
    from cpcl_kit.method.variants import each
    from cpcl_kit.nets.deeplab import ASPP

    cores = os.cpu_count() or 1
    torch.set_flush_denormal(True)
    cfg = make_config("demo", method=method)
    trainer = Trainer.create(cfg, torch.device("cpu"))
    batch = synthetic_batch(cfg, torch.device("cpu"))
    lam, step_fn = cfg.unsup_weight, registry.method(method).step
    kit_opts = trainer.opts
    plain_opts = plain_optimizers(trainer)
    # name: (how the nets are mapped, torch threads, the plain step's ASPP and Adam or the kit's)
    ways = {"plain step, one thread": (each, 1, True), "one thread": (each, 1, False),
            "net threads": (on_threads, 1, False), f"{cores} torch threads": (each, cores, False)}
    if method == "supervised":
        del ways["net threads"]  # one net: nothing to put on a second thread
    before = torch.get_num_threads()
    times = {k: [] for k in ways}
    try:
        for r in range(warmup + rounds):
            for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                trainer.par, threads, plain = ways[name]
                ASPP.fold_small_maps, trainer.opts = (False, plain_opts) if plain else (True, kit_opts)
                torch.set_num_threads(threads)
                # A run keeps one way for all its steps: the first step after a switch of thread
                # count or optimizer pays for the switch, so each visit times the steps after it.
                for k in range(block + 1):
                    t0 = time.perf_counter()
                    trainer.step(step_fn, batch, 1000 + r, lam)
                    if r >= warmup and k > 0:
                        times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
        ASPP.fold_small_maps, trainer.opts = True, kit_opts
    gflop = step_gflop(trainer, step_fn, batch, lam)
    rate1, rate_all = conv_gflops(1), conv_gflops(cores)
    out = {"gflop": round(gflop, 3), "conv_gflops_one_thread": round(rate1, 1),
           f"conv_gflops_{cores}_threads": round(rate_all, 1)}
    plain_s = statistics.median(times["plain step, one thread"])
    for name, ts in times.items():
        t = statistics.median(ts)
        rate = rate_all if ways[name][0] is on_threads or ways[name][1] > 1 else rate1
        out[name] = {"median_s": round(t, 4), "limit_s": round(gflop / rate, 4), "ratio_to_limit": round(t * rate / gflop, 2),
                     "speedup_vs_plain_step": round(plain_s / t, 2)}
    return out


def measure_eval(rounds: int = 3, batches=(4, None), scenes: int | None = None) -> dict:
    """The demo preset's end-of-run evaluation: both nets of a CPCL run on its validation scenes,
    scored as net 1, net 2 and their ensemble from one pass per net, at 4 images a batch and at the
    default (``evaluate.auto_batch``), interleaved on one thread. Its nets: the shipped backbone with
    fresh heads (no trained run needed); whether each branch's confusion matrix is the same at both
    batches is recorded, not assumed. ``scenes``: that many validation scenes (default the preset's)."""
    from cpcl_kit.data.build import build_data
    from cpcl_kit.engine.evaluate import auto_batch, evaluate
    from cpcl_kit.engine.trainer import nets_for

    torch.set_flush_denormal(True)
    cfg = make_config("demo", method="cpcl", **({"n_val_scenes": scenes} if scenes else {}))
    data, nets = build_data(cfg), nets_for(cfg)
    times, results = {b: [] for b in batches}, {}
    for r in range(rounds):
        for b in (batches if r % 2 == 0 else batches[::-1]):
            t0 = time.perf_counter()
            results[b] = evaluate(nets, data.val, cfg.num_classes, branches=True, batch_size=b, progress=False)
            times[b].append(time.perf_counter() - t0)
    side = cfg.scene_size
    name = {b: f"batch {b}" if b else f"batch {auto_batch(side, side)} (default)" for b in batches}
    out = {"scenes": len(data.val), "nets": len(nets)}
    for b in batches:
        out[name[b]] = {"median_s": round(statistics.median(times[b]), 3),
                        "speedup_vs_batch_4": round(statistics.median(times[4]) / statistics.median(times[b]), 2)}
    out["confusion_equal"] = {k: bool(torch.equal(results[4][k]["confusion"], results[None][k]["confusion"]))
                              for k in results[4]}
    return out


# ------------------------------------------------------------------------------------------------
# what make demo trains, and the least time two cores need for it


def _phases(cfg) -> list[tuple[int, int]]:
    """(first iteration, iterations) of each phase of a run whose steps cost alike: a two-net method's
    supervised-only start (no teacher or student pass), then the rest."""
    if registry.method(cfg.method).unlabeled and 0 < cfg.sup_only_iters < cfg.iterations:
        return [(0, cfg.sup_only_iters), (cfg.sup_only_iters, cfg.iterations - cfg.sup_only_iters)]
    return [(0, cfg.iterations)]


def _iteration_seconds(cfg, data, first: int, iterations: int, warmup: int, plain: bool = False) -> float:
    """Median seconds of an iteration of ``cfg``'s run from iteration ``first``, as the loop runs it:
    the next batch from the loader, moved and finished (``batch_to``), the step. ``plain``: the
    plain step of the limit section (ASPP's branches as written, per-tensor Adam)."""
    from cpcl_kit.engine.device import batch_to
    from cpcl_kit.engine.train import training_batches
    from cpcl_kit.nets.deeplab import ASPP

    cpu = torch.device("cpu")
    trainer = Trainer.create(cfg, cpu)
    if plain:
        trainer.opts = plain_optimizers(trainer)
    step_fn = registry.method(cfg.method).step
    batches = iter(training_batches(cfg, data, first, cpu))
    times = []
    ASPP.fold_small_maps = not plain
    try:
        for it in range(first, first + min(warmup + iterations, cfg.iterations - first)):
            t0 = time.perf_counter()
            trainer.step(step_fn, batch_to(next(batches), cpu, cfg.channels_last), it)
            times.append(time.perf_counter() - t0)
    finally:
        ASPP.fold_small_maps = True
    return statistics.median(times[warmup:])


def measure_capacity(seconds: float = 10.0, rounds: int = 3) -> dict:
    """How much one-thread work two cores do at once: the demo's supervised step in one process
    alone, then in two processes at the same time (``synthetic.one_thread_steps``), ``rounds`` times
    in turn (a shared machine's speed drifts). ``cores`` = 2 x alone / together (medians over the
    rounds), at most 2: 2 where the two processes do not slow each other (shared caches, memory
    bandwidth and clock do). ``overlap``: the least share of a pair's timed steps that ran while the
    other process stepped too (1: fully at once)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    alone, together, overlap = [], [], []
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        # both workers started, each having imported the kit and stepped once (a short first round)
        list(pool.map(one_thread_steps, ["demo"] * 2, [0.0] * 2, [time.time() + 3] * 2))
        for _ in range(rounds):
            alone.append(pool.submit(one_thread_steps, "demo", seconds, time.time() + 0.5).result()["s_per_step"])
            start = time.time() + 1.5  # after both have built their nets (about 0.3 s once imported)
            pair = [f.result() for f in [pool.submit(one_thread_steps, "demo", seconds, start) for _ in range(2)]]
            together += [r["s_per_step"] for r in pair]
            shared = min(r["ended"] for r in pair) - max(r["began"] for r in pair)
            overlap.append(max(0.0, shared) / max(r["ended"] - r["began"] for r in pair))
    a, t = statistics.median(alone), statistics.median(together)
    return {"alone_s_per_step": [round(x, 4) for x in alone], "together_s_per_step": [round(x, 4) for x in together],
            "overlap": round(min(overlap), 3), "measured_cores": round(2 * a / t, 3), "cores": round(min(2.0, 2 * a / t), 3)}


def measure_demo(iterations: int = 20, warmup: int = 3, pair_seconds: float = 10.0, rounds: int = 3,
                 scenes: int | None = None) -> dict:
    """The work of the runs make demo trains (``teach.runner.DEMO_TRAINS``) in one-thread seconds on
    this CPU: each phase's iterations x its median one-thread iteration (loader, batch, step), as
    run from the shipped backbone and fresh heads (a two-net run's phases also with each net on its
    own thread, as such a run trains when both cores are free, and with the limit section's plain
    step). Divided by how many cores' worth of one-thread
    work the two processes get done at once (``measure_capacity``), it is the least time any
    schedule needs for the training alone: the evaluations, checkpoints and logging, the notebooks'
    own cells, kernel starts and HTML conversion come on top. ``scenes``: that many training and validation scenes (a quick
    check of the code; the default is the preset's)."""
    from cpcl_kit.data.build import build_data
    from cpcl_kit.teach.runner import DEMO_TRAINS

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    runs, work = [], 0.0
    for notebook, method, settings in DEMO_TRAINS:
        size = {"n_train_scenes": scenes, "n_val_scenes": scenes} if scenes else {}
        cfg = make_config("demo", method=method, net_threads=False, **settings, **size)  # one thread's work
        data = build_data(cfg)
        phases = []
        for first, n in _phases(cfg):
            if registry.method(method).nets == 1:
                t = _iteration_seconds(cfg, data, first, iterations, warmup)
                phases.append({"first_iteration": first, "iterations": n, "s_per_iteration": round(t, 4)})
            else:  # also as the run trains when both cores are free (each net on its own thread), and
                # as the plain step of the limit section would make it, the nets in turn on one thread
                ways = {"one": (cfg, False), "net": (dataclasses.replace(cfg, net_threads=True), False),
                        "plain": (cfg, True)}
                times = {k: [] for k in ways}
                for k in [*ways, *reversed(ways)]:  # in turn: a shared machine's speed drifts
                    times[k].append(_iteration_seconds(ways[k][0], data, first, iterations, warmup, ways[k][1]))
                t, tn, tp = (statistics.mean(times[k]) for k in ways)
                phases.append({"first_iteration": first, "iterations": n, "s_per_iteration": round(t, 4),
                               "net_threads_s_per_iteration": round(tn, 4), "net_threads_speedup": round(t / tn, 2),
                               "plain_s_per_iteration": round(tp, 4),
                               "net_threads_speedup_vs_plain": round(tp / tn, 2)})
            work += n * t
        runs.append({"notebook": notebook, "method": method, "settings": settings, "phases": phases,
                     "one_thread_s": round(sum(p["iterations"] * p["s_per_iteration"] for p in phases), 1)})
    capacity = measure_capacity(pair_seconds, rounds)
    return {"runs": runs, "work_one_thread_s": round(work, 1), "capacity": capacity,
            "training_floor_s": round(work / capacity["cores"], 1)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _guarded(fn, *a, **kw) -> dict:
    """``fn(...)``, or ``{"error": ...}`` when the device runs out of memory (large GPU settings)."""
    try:
        return fn(*a, **kw)
    except torch.cuda.OutOfMemoryError as e:
        error = f"out of memory: {str(e).splitlines()[0]}"
    torch.cuda.empty_cache()  # here, once the traceback (and the frames holding the nets) is gone
    return {"error": error}


def _goal(value: float | None, goal: float, kind: str, note: str = "") -> dict:
    met = None if value is None else (value <= goal if kind == "max" else value >= goal)
    return {"value": value, "goal": goal, "kind": "at most" if kind == "max" else "at least",
            "met": met, **({"note": note} if note else {})}


def run_benchmark(args, device: torch.device, progress=print) -> dict:
    """Every measurement; returns the JSON-able result."""
    t_start = time.perf_counter()
    res: dict = {
        "device": device_slug(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__, "python": platform.python_version(), "commit": code_version(full=True, tree=True)["commit"],
        # uncommitted changes to tracked files: the measured code is then not exactly ``commit``
        "worktree_dirty": bool(code_version(full=True, tree=True)["dirty"]),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        # TF32 settings the fp32 figures ran with (CUDA; ignored on the CPU)
        "tf32": tf32_state(), "compiled": args.compile or False,
        # paths as a clone names them: the JSON is committed and read on other machines
        "args": {k: (recorded_path(v, k) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k != "child_method"},
    }
    sections = set(args.sections)
    training = []
    for method in args.methods if "training" in sections else ():
        progress(f"training step: {method} ...")
        training.append({"method": method, **(measure_training_isolated(method, args) if args.isolate
                                               else _guarded(measure_training, method, args, device))})
    res["training"] = training

    skipped = {"skipped": "not in --sections"}
    res["overhead"] = skipped
    if "overhead" in sections:
        progress("CPCL overhead (bare vs CPCL steps) ...")
        res["overhead"] = _guarded(measure_overhead, args, device)

    res["pseudo_labels"] = skipped
    if "pseudo" in sections:
        progress("pseudo-label block ...")
        res["pseudo_labels"] = measure_pseudo_labels(device, args.pl_batch, args.pl_classes, args.pl_size,
                                                     args.pl_repeats)

    if "amp" not in sections:
        res["amp"] = skipped
    elif device.type == "cuda":
        progress("CPCL step in fp32 (AMP comparison) ...")
        amp_run = next((t for t in training if t["method"] == "cpcl"), None)
        if amp_run is None:  # the table did not measure CPCL: measure it as the table would have
            amp_run = _guarded(measure_training, "cpcl", args, device)
        if not args.amp:  # the table ran in fp32: measure the autocast step now
            fp32, amp_run = amp_run, _guarded(measure_training, "cpcl", args, device, amp=True)
        else:
            fp32 = _guarded(measure_training, "cpcl", args, device, amp=False)
        fp32, amp_run = {"method": "cpcl", **fp32}, {"method": "cpcl", **amp_run}
        res["amp"] = {"fp32": fp32, "amp": amp_run}
        if "error" in fp32 or "error" in amp_run:
            res["amp"]["skipped"] = f"a CPCL step failed: {fp32.get('error') or amp_run.get('error')}"
        else:
            res["amp"]["speedup"] = amp_run["images_per_s"] / fp32["images_per_s"]
    else:
        res["amp"] = {"skipped": "AMP is CUDA-only in the training loop (autocast is off on the CPU)"}

    def cpu_section(name: str, what: str, measure) -> dict:
        """A section measured on the CPU only: the demo preset's ``what``, ``measure()``'s numbers."""
        if name not in sections:
            return skipped
        if device.type != "cpu":
            return {"skipped": f"the demo preset's {what}: measured on the CPU"}
        progress(f"the demo preset's {what} ...")
        return {"preset": "demo", "machine": machine(), **measure()}

    res["limit"] = cpu_section("limit", "step against the CPU's limit", lambda: {
        m: _guarded(measure_limit, m, rounds=args.limit_rounds, warmup=min(3, args.limit_rounds))
        for m in args.methods})
    res["eval"] = cpu_section("eval", "end-of-run evaluation at two batch sizes", lambda: _guarded(
        measure_eval, rounds=args.eval_rounds, scenes=args.eval_scenes))
    res["demo"] = cpu_section("demo", "runs make demo trains, and the least time for them", lambda: measure_demo(
        args.demo_iterations, pair_seconds=args.demo_pair_seconds, rounds=args.demo_rounds, scenes=args.demo_scenes))

    pl_default = (args.pl_batch, args.pl_classes, args.pl_size) == (8, 21, 128)
    paper_size = args.backbone in ("resnet50", "resnet50_v1c") and args.crop == 512
    goals = {}
    if "overhead" in sections:
        goals["cpcl_overhead_ratio"] = _goal(res["overhead"].get("ratio"), GOAL_OVERHEAD, "max",
                                             res["overhead"].get("error", ""))
    pl = res["pseudo_labels"]
    if device.type == "cpu" and "pseudo" in sections:
        goals["pseudo_label_speedup_cpu"] = _goal(
            pl["speedup_vs_sklearn"], GOAL_PSEUDO_CPU, "min",
            "vs the official recipe with sklearn confusion_matrix"
            + ("" if pl_default else "; goal is stated for B=8, C=21, 128x128"))
    if "speedup" in res["amp"]:
        goals["amp_speedup"] = _goal(res["amp"]["speedup"], GOAL_AMP, "min",
                                     "" if paper_size else "goal is stated for resnet50 at 512x512")
    if "training_floor_s" in res["demo"]:
        goals["demo_training_floor_s"] = _goal(
            res["demo"]["training_floor_s"], GOAL_DEMO_S, "max",
            "make demo's goal; this is its training alone, scheduled perfectly on this CPU")
    res["goals"] = goals
    res["seconds"] = time.perf_counter() - t_start
    return res


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [f"### Speed: {res['device']} ({res['device_name']}), torch {res['torch']}, "
             f"torch threads: {res['threads']}, commit {(res['commit'] or '?')[:10]}"
             f"{' + uncommitted changes' if res.get('worktree_dirty') else ''}",
             "",
             f"{a['backbone']}, OS{a['output_stride']}, head {a['head_channels']}, crop {a['crop']}, "
             f"batch {a['batch']} (+{a['batch']}+{a['batch']} unlabeled), {a['classes']} classes; "
             f"median of {a['steps']} steps after {a['warmup']} warm-up",
             "",
             "| measurement | s / step | CPU s / step | images / step | images / s | peak memory (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    amp = res["amp"]
    cpcl_row = next((t for t in res["training"] if t["method"] == "cpcl"), None)
    rows = res["training"] + [r for r in (amp.get("fp32"), amp.get("amp")) if r and r != cpcl_row]
    for t in rows:
        if "error" in t:
            lines.append(f"| train {t['method']} | failed: {t['error']} | | | | |")
            continue
        flags = "".join(f", {k}" for k in ("channels_last", "compiled") if t.get(k))
        lines.append(f"| train {t['method']} ({t['amp']}{flags}) | {t['median_s']:.4f} | {t['cpu_median_s']:.4f} | "
                     f"{t['images_per_step']} | {t['images_per_s']:.1f} | {t['peak_mem_mib']:.0f} |")
    mem_kind = next((t["mem_kind"] for t in rows if "mem_kind" in t), "?")
    o, p = res["overhead"], res["pseudo_labels"]
    clock = p.get("clock", o.get("clock", "wall"))
    tf = res.get("tf32")
    if tf:
        lines += ["", f"CUDA fp32 math: TF32 convolutions {'on' if tf['cudnn_conv'] else 'off'}, TF32 matmuls "
                      f"{'on' if tf['matmul'] else 'off'}."]
    lines += ["", f"Memory: {mem_kind}. Ratios below use {'process CPU' if clock == 'cpu' else 'wall'} "
              f"time{' (wall-clock ratio in brackets)' if clock == 'cpu' else ''}.", "",
              "| comparison | value | detail |", "|---|---:|---|"]

    def alt(block, key, fmt):
        return f" ({fmt.format(block['wall'][key])})" if clock == "cpu" else ""

    if "skipped" in o:
        lines.append(f"| CPCL overhead | skipped | {o['skipped']} |")
    elif "error" in o:
        lines.append(f"| CPCL overhead (CPCL / bare step) | failed | {o['error']} |")
    else:
        c = o[o["clock"]]
        lines.append(f"| CPCL overhead (CPCL / bare step) | {o['ratio']:.3f}{alt(o, 'ratio', '{:.3f}')} | "
                     f"{c['cpcl_median_s']:.4f} s vs {c['bare_median_s']:.4f} s, medians of {o['pairs']} "
                     f"interleaved pairs |")
    if "skipped" in p:
        lines.append(f"| pseudo-label block | skipped | {p['skipped']} |")
    else:
        shape = "x".join(str(s) for s in p["shape"])
        c = p[clock]
        lines.append(f"| pseudo-label block speed-up vs host sklearn | {p['speedup_vs_sklearn']:.2f}x"
                     f"{alt(p, 'speedup_vs_sklearn', '{:.2f}x')} | [{shape}]: kit {c['kit_median_s'] * 1e3:.2f} ms, "
                     f"host sklearn {c['host_sklearn_median_s'] * 1e3:.2f} ms |")
        lines.append(f"| pseudo-label block speed-up vs host np.bincount | {p['speedup_vs_bincount']:.2f}x"
                     f"{alt(p, 'speedup_vs_bincount', '{:.2f}x')} | host bincount "
                     f"{c['host_bincount_median_s'] * 1e3:.2f} ms; outputs match: {all(p['outputs_match'].values())} |")
    limit = res.get("limit", {})
    for method, m in ((k, v) for k, v in limit.items() if isinstance(v, dict) and "gflop" in v):
        for way, w in ((k, v) for k, v in m.items() if isinstance(v, dict)):
            lines.append(f"| demo {method} step, {way} | {w['median_s'] * 1e3:.0f} ms | {m['gflop']:.2f} GFLOP; "
                         f"{w['ratio_to_limit']:.2f}x the time the convolution rate allows ({w['limit_s'] * 1e3:.0f} ms); "
                         f"{w['speedup_vs_plain_step']:.2f}x the plain step |")
    ev = res.get("eval", {})
    for way, w in ((k, v) for k, v in ev.items() if isinstance(v, dict) and "median_s" in v):
        lines.append(f"| demo evaluation, {ev['scenes']} scenes x {ev['nets']} nets, {way} | {w['median_s']:.2f} s | "
                     f"{w['speedup_vs_batch_4']:.2f}x batch 4; same confusion matrices: "
                     f"{all(ev['confusion_equal'].values())} |")
    demo = res.get("demo", {})
    for r in demo.get("runs", []):
        what = r["method"] + "".join(f", {k}={v}" for k, v in r["settings"].items())
        per = "; ".join(f"{p['iterations']} x {p['s_per_iteration'] * 1e3:.1f} ms"
                        + (f" (net threads {p['net_threads_s_per_iteration'] * 1e3:.1f} ms: {p['net_threads_speedup']:.2f}x "
                           f"one thread, {p['net_threads_speedup_vs_plain']:.2f}x the plain step's iteration, "
                           f"{p['plain_s_per_iteration'] * 1e3:.1f} ms)"
                           if "net_threads_s_per_iteration" in p else "") for p in r["phases"])
        lines.append(f"| make demo's run in {r['notebook']}: {what} | {r['one_thread_s']:.0f} s | one thread: {per} |")
    if "training_floor_s" in demo:
        c = demo["capacity"]
        lines.append(f"| make demo's training, least time on these cores | {demo['training_floor_s']:.0f} s | "
                     f"{demo['work_one_thread_s']:.0f} one-thread s / {c['cores']:.2f} cores' worth (a one-thread step "
                     f"{statistics.median(c['alone_s_per_step']) * 1e3:.1f} ms alone, "
                     f"{statistics.median(c['together_s_per_step']) * 1e3:.1f} ms with another beside it; medians "
                     f"of {len(c['alone_s_per_step'])} rounds, the pairs at least {100 * c['overlap']:.0f} % at once) |")
    if "speedup" in amp:
        lines.append(f"| AMP / fp32 images/s (cpcl) | {amp['speedup']:.2f}x | {amp['amp']['amp']} autocast |")
    else:
        lines.append(f"| AMP / fp32 | skipped | {amp['skipped']} |")
    lines += ["", "| goal | value | target | met |", "|---|---:|---:|---|"]
    for name, g in res["goals"].items():
        value = "n/a" if g["value"] is None else f"{g['value']:.3f}"
        lines.append(f"| {name} | {value} | {g['kind']} {g['goal']} | "
                     f"{'n/a' if g['met'] is None else 'yes' if g['met'] else 'NO'}{' (' + g['note'] + ')' if g.get('note') else ''} |")
    lines += ["", f"Benchmark run time: {res['seconds']:.0f} s"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.child_method:  # one isolated training measurement, printed as one JSON line
        print(json.dumps(measure_training(args.child_method, args, device)))
        return 0
    res = run_benchmark(args, device, progress=lambda m: print(m, file=sys.stderr, flush=True))
    out = args.out or RESULTS / f"speed-{res['device']}.json"
    write_json(out, res)
    print(markdown(res))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
