"""``python -m cpcl_kit doctor``: can this machine train a preset, and how fast?

``diagnose(cfg)`` answers without the data set: the device and its software (torch, CUDA, cuDNN,
bf16), whether the data root and backbone weights the settings name are there, a few timed
training steps of ``cfg.method`` at the preset's batch and crop on synthetic batches of the right
shape (the training loop's own ``Trainer.step``, ``synthetic``), their images/s and peak memory, on
CUDA the largest batch that fits (a short doubling-then-bisection search with a cap and a time
limit) and the learning rate the linear scaling rule gives for the batch that can run. The nets are
randomly initialised (weights change nothing of a step's cost), and the step runs with the full λ,
also where the preset starts supervised only.
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import files, registry
from ..config import PAPER_PRESETS, Config
from ..errors import KitError
from ..nets import pretrain
from . import tblog
from .device import amp_dtype, bf16_native, pick_device, setup_device
from .synthetic import PeakMemory, images_per_step, synthetic_batch, sync, time_steps
from .trainer import Trainer

SEARCH_CAP = 8           # the batch search stops at this multiple of the preset's batch
SEARCH_SECONDS = 20.0    # ... and after this many seconds (the batches it found so far are kept)
LINEAR_RULE = ("linear scaling rule: lr x batch / preset batch (Goyal et al. 2017); a rule for SGD, "
               "a rougher guide for Adam; the preset's lr was chosen for its own batch")


# ------------------------------------------------------------------------------------------------
# what the machine has


def environment(device: torch.device, cfg: Config) -> dict:
    """Device, software versions, bf16 and the autocast dtype ``cfg.amp`` gives there."""
    cuda = device.type == "cuda"
    dtype = amp_dtype(device, cfg.amp)
    env = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else files.machine(),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cuda_available": torch.cuda.is_available(), "torch_threads": torch.get_num_threads(),
           "bf16_native": bf16_native() if cuda else None,
           "amp": str(dtype).replace("torch.", "") if dtype is not None else "fp32",
           "tensorboard": tblog.available()}
    if cuda:
        p = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    return env


def _found(path, what: str) -> dict:
    path = Path(path)
    return {"status": "found" if path.exists() else "missing", "path": str(path), "what": what}


def data_status(cfg: Config) -> dict:
    """Whether the data the settings train on is there (found / missing / embedded), and where: the
    data set's own check (``registry.DatasetEntry.check``)."""
    entry = registry.dataset(cfg.dataset)
    if entry.generated:
        return {"status": "embedded", "path": None, "what": f"{entry.about}; nothing to download"}
    if not cfg.data_root:
        return {"status": "missing", "path": None, "what": f"--data-root: required for dataset '{cfg.dataset}'"}
    if entry.check is None:
        return _found(cfg.data_root, f"{cfg.dataset} data root")
    try:
        what = entry.check(cfg.data_root)
    except KitError as e:
        return {"status": "missing", "path": str(cfg.data_root), "what": str(e)}
    return {"status": "found", "path": str(cfg.data_root), "what": what}


def weights_status(cfg: Config) -> dict:
    """Whether the backbone weights the settings name are there: the shipped or cached digit backbone
    (``backbone_weights="digits"``), a file, torchvision's ImageNet cache, or random init."""
    w = cfg.backbone_weights
    if w == pretrain.NAMED_WEIGHTS:
        spec = pretrain.spec_for(cfg)
        shipped = pretrain.shipped_path(spec)
        if shipped is not None:
            return {"status": "found", "path": str(shipped), "what": "the digit backbone shipped with the kit"}
        cached = pretrain.DEFAULT_CACHE_DIR / pretrain.weights_name(spec)
        if cached.is_file():
            return {"status": "found", "path": str(cached), "what": "the digit backbone, cached"}
        return {"status": "missing", "path": str(cached),
                "what": "not shipped for these pretrain_* settings: the first run pretrains it "
                        "(python -m cpcl_kit pretrain)"}
    if w is None:
        if cfg.preset in PAPER_PRESETS:
            return {"status": "missing", "path": None,
                    "what": f"backbone_weights: the {cfg.preset} preset needs pretrained weights "
                            f"(--set backbone_weights=<file>); training refuses to start without them"}
        return {"status": "random init", "path": None, "what": "no backbone weights given"}
    if w == "none":
        return {"status": "random init", "path": None, "what": "backbone_weights=none: random init on purpose"}
    if w == "imagenet":
        from ..nets.deeplab import imagenet_state_dict

        try:
            imagenet_state_dict(cfg.backbone)
        except KitError as e:
            return {"status": "missing", "path": None, "what": str(e)}
        return {"status": "found", "path": str(Path(torch.hub.get_dir()) / "checkpoints"),
                "what": f"torchvision's ImageNet weights of {cfg.backbone}"}
    return _found(w, f"backbone weights file for {cfg.backbone}")


# ------------------------------------------------------------------------------------------------
# timed steps and the batch search


def _timing_config(cfg: Config) -> Config:
    return dataclasses.replace(cfg, backbone_weights=None)  # random init: the cost is the same


def _free(trainer: Trainer, device: torch.device) -> None:
    for opt in trainer.opts:
        opt.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fits(trainer: Trainer, cfg: Config, batch_size: int, unlabeled: int) -> tuple[bool, float | None]:
    """Whether two steps at this batch run without a CUDA out-of-memory error, and their peak MiB."""
    c = dataclasses.replace(cfg, batch_size=batch_size, unlabeled_batch_size=unlabeled)
    try:
        with PeakMemory(trainer.device) as mem:
            batch = synthetic_batch(c, trainer.device)
            for it in range(2):
                trainer.step(registry.method(cfg.method).step, batch, it, cfg.unsup_weight)
            sync(trainer.device)
            del batch
        return True, mem.mib
    except torch.cuda.OutOfMemoryError:
        return False, None


def largest_batch(trainer: Trainer, cfg: Config, cap: int = SEARCH_CAP, seconds: float = SEARCH_SECONDS,
                  progress: bool = True) -> dict:
    """The largest labeled batch (the unlabeled batches scaled alike) whose steps fit in GPU memory:
    from the preset's batch, doubled until a step runs out of memory (or halved until one fits),
    then bisected to within an eighth; at most ``cap`` x the preset's batch and ``seconds`` of
    searching. ``exact`` is False where the cap or the time limit ended it (``largest`` is then a
    lower bound)."""
    base, ratio = cfg.batch_size, cfg.unlabeled_batch_size / cfg.batch_size
    t0 = time.monotonic()
    tried: list[dict] = []
    lo, hi = None, None  # largest batch known to fit, smallest known not to

    def attempt(b: int) -> bool:
        ub = max(2, round(b * ratio))
        ok, mib = _fits(trainer, cfg, b, ub)
        _free(trainer, trainer.device)  # here, once the out-of-memory traceback is gone
        tried.append({"batch_size": b, "unlabeled_batch_size": ub, "fits": ok,
                      "peak_mem_mib": None if mib is None else round(mib)})
        bar.update(1)
        bar.set_postfix(batch=b, fits=ok)
        return ok

    def time_left() -> bool:
        return time.monotonic() - t0 < seconds

    with tqdm(desc="largest batch", unit="try", disable=not progress, leave=False) as bar:
        b = base
        while time_left():
            if attempt(b):
                lo = b
                if hi is not None or b * 2 > cap * base:
                    break
                b *= 2
            else:
                hi = b
                if lo is not None or b <= 2:
                    break
                b = max(2, b // 2)
        while lo is not None and hi is not None and hi - lo > max(1, lo // 8) and time_left():
            mid = (lo + hi) // 2
            if attempt(mid):
                lo = mid
            else:
                hi = mid
    capped = hi is None and lo is not None and lo * 2 > cap * base
    exact = lo is not None and (hi is not None and hi - lo <= max(1, lo // 8))
    return {"largest": lo, "smallest_failing": hi, "exact": exact, "capped": capped,
            "cap": cap * base, "seconds": round(time.monotonic() - t0, 1), "seconds_limit": seconds,
            "tried": tried}


def scaled_lr(cfg: Config, batch_size: int) -> dict:
    """The learning rate the linear scaling rule gives for ``batch_size`` from the preset's lr and batch."""
    lr = cfg.lr * batch_size / cfg.batch_size
    ub = max(2, round(batch_size * cfg.unlabeled_batch_size / cfg.batch_size))
    return {"batch_size": batch_size, "unlabeled_batch_size": ub, "lr": lr, "preset_batch_size": cfg.batch_size,
            "preset_lr": cfg.lr, "rule": LINEAR_RULE,
            "set": f"--set batch_size={batch_size} --set unlabeled_batch_size={ub} --set lr={lr:.6g}"}


def diagnose(cfg: Config, steps: int = 3, warmup: int = 2, search: bool = True,
             search_seconds: float = SEARCH_SECONDS, progress: bool = True) -> dict:
    """The whole report as a JSON-able dict: ``environment``, ``data``, ``backbone_weights``,
    ``steps`` (the timed steps at the preset's sizes), ``batch_search`` (CUDA only) and ``lr``."""
    if steps < 1:
        raise KitError(f"--steps: expected at least 1 timed step, got {steps}")
    if warmup < 0:
        raise KitError(f"--warmup: expected 0 or more warm-up steps, got {warmup}")
    device = pick_device(cfg.device)
    t0 = time.monotonic()
    report = {"preset": cfg.preset, "method": cfg.method, "dataset": cfg.dataset,
              "environment": environment(device, cfg), "data": data_status(cfg),
              "backbone_weights": weights_status(cfg)}
    tcfg = _timing_config(cfg)
    setup_device(tcfg, device)
    trainer = Trainer.create(tcfg, device)
    report["steps"] = {
        "method": cfg.method, "backbone": cfg.backbone, "crop": cfg.crop, "batch_size": cfg.batch_size,
        "unlabeled_batch_size": cfg.unlabeled_batch_size if registry.method(cfg.method).unlabeled else 0,
        "images_per_step": images_per_step(tcfg), "warmup": warmup, "timed": steps,
        "amp": report["environment"]["amp"],
        "note": "synthetic batches of the preset's shape, random-init nets, full λ"}
    report["steps"].update(_timed_steps(trainer, tcfg, steps, warmup, progress))
    _free(trainer, device)  # here, once an out-of-memory traceback is gone
    batch_run = cfg.batch_size
    if device.type == "cuda" and search:
        report["batch_search"] = largest_batch(trainer, tcfg, seconds=search_seconds, progress=progress)
        batch_run = report["batch_search"]["largest"] or cfg.batch_size
    else:
        report["batch_search"] = {"skipped": "CUDA only" if device.type != "cuda" else "not asked for"}
    del trainer
    _free_device(device)
    report["lr"] = scaled_lr(cfg, batch_run)
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


def _timed_steps(trainer: Trainer, cfg: Config, steps: int, warmup: int, progress: bool) -> dict:
    """Seconds per step, images/s and peak memory of ``steps`` timed steps at the preset's batch (the
    nets' and optimizer's memory included); an ``error`` instead where that batch does not fit."""
    try:
        with PeakMemory(trainer.device) as mem:
            batch = synthetic_batch(cfg, trainer.device)
            with tqdm(total=warmup + steps, desc=f"doctor: {cfg.method} steps", disable=not progress,
                      leave=False) as bar:
                timing = time_steps(trainer, registry.method(cfg.method).step, batch, steps, warmup, on_step=bar.update)
            del batch
    except torch.cuda.OutOfMemoryError as e:
        return {"error": f"out of memory at the preset's batch ({str(e).splitlines()[0][:200]})"}
    return {"seconds_per_step": timing["median_s"], "images_per_s": timing["images_per_s"],
            "times_s": timing["times_s"], "warmup_s": timing["warmup_s"],
            "peak_mem_mib": mem.mib, "peak_total_mib": mem.total_mib, "mem_kind": mem.kind}


def _free_device(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# the printed table


def table(report: dict) -> str:
    """The report as a two-column plain-text table."""
    env, st, lr = report["environment"], report["steps"], report["lr"]
    rows = [("device", f"{env['device']} ({env['device_name']})"
                       + ("" if env["cuda_available"] else "; no CUDA device here")),
            ("torch / CUDA / cuDNN", f"{env['torch']} / {env['cuda'] or '-'} / {env['cudnn'] or '-'}"),
            ("bf16 in hardware", "n/a (CPU)" if env["bf16_native"] is None else "yes" if env["bf16_native"] else "no"),
            ("autocast (amp setting)", env["amp"]),
            ("TensorBoard installed", "yes" if env["tensorboard"] else "no (runs write no event files)")]
    for key, label in (("data", "data"), ("backbone_weights", "backbone weights")):
        d = report[key]
        rows.append((label, f"{d['status']}: {d['what']}" + (f" ({d['path']})" if d.get("path") else "")))
    step = (f"{st['method']} at batch {st['batch_size']}"
            + (f"+{st['unlabeled_batch_size']}+{st['unlabeled_batch_size']}" if st["unlabeled_batch_size"] else "")
            + f", crop {st['crop']}, {st['backbone']}, {st['amp']}")
    rows.append(("timed step", f"{step}: median of {st['timed']} after {st['warmup']} warm-up"))
    if "error" in st:
        rows.append(("images per second", st["error"]))
    else:
        rows += [("seconds per step", f"{st['seconds_per_step']:.3f}"),
                 ("images per second", f"{st['images_per_s']:.1f}"),
                 ("peak memory (MiB)", f"{st['peak_mem_mib']:.0f} added by the steps, {st['peak_total_mib']:.0f} "
                                       f"in all ({st['mem_kind']})")]
    bs = report["batch_search"]
    if "skipped" in bs:
        rows.append(("largest batch", f"not searched ({bs['skipped']})"))
    elif bs["largest"] is None:
        rows.append(("largest batch", "none fits: even batch 2 runs out of memory"))
    else:
        how = ("to within an eighth" if bs["exact"] else f"at least (cap {bs['cap']})" if bs["capped"]
               else f"at least (search stopped after {bs['seconds_limit']:.0f} s)")
        rows.append(("largest batch", f"{bs['largest']} labeled ({how}; {len(bs['tried'])} tries)"))
    rows.append(("lr for that batch", f"{lr['lr']:.6g} for batch {lr['batch_size']} (preset: {lr['preset_lr']:g} "
                                      f"at {lr['preset_batch_size']}; {lr['rule']})"))
    rows.append(("settings", lr["set"]))
    width = max(len(k) for k, _ in rows)
    title = f"cpcl-kit doctor: preset {report['preset']}, method {report['method']}, {report['seconds']} s"
    return "\n".join([title, "-" * len(title)] + [f"{k.ljust(width)}  {v}" for k, v in rows])
