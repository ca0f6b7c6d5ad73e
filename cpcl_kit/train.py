"""One training loop for every method; a method is a function of the batch.

``supervised`` trains one net on labeled images; ``cps`` and ``cpcl`` train two nets that teach each
other on CutMix-mixed unlabeled images (method notes §2–§5). The loop owns the optimizers, the lr
schedule, AMP, logging, checkpoints and the final evaluation.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import DEVIATIONS, PRESETS, Config
from .cpcl import agreement, cutmix_box_masks, mix, pseudo_supervision, weighted_ce
from .data import build_data
from .distributed import DistInfo, all_reduce_sum, barrier, init_from_env
from .errors import KitError
from .evaluate import evaluate
from .loaders import semi_supervised_batches, supervised_batches
from .model import DeepLabV3Plus
from .pretrain import resolve_backbone_weights

IGNORE = 255

# Cityscapes OHEM class weights (method notes §4), in trainId order.
CITYSCAPES_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                      0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)


class TrainingDiverged(KitError):
    """The loss became NaN or infinite."""


# ------------------------------------------------------------------------------------------------
# devices, models, optimizers, schedule


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KitError(f"device: '{name}' asked for, but no CUDA device is available")
    return torch.device(name)


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on a GPU that supports it, else fp16, and fp32 (None) on
    CPU; ``bf16``/``fp16`` force one (bf16 autocast also runs on CPU); ``off`` is fp32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise KitError("amp: fp16 autocast needs a CUDA device; use amp=bf16 or amp=off on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def build_nets(cfg: Config) -> list[DeepLabV3Plus]:
    """One net (supervised) or two (cps, cpcl) with identical backbones and different heads.

    As in the official code, both branches start from the same backbone weights (the pretrained file,
    or net 1's random draw copied) and their heads are consecutive random draws from one seeded stream.
    """
    weights = resolve_backbone_weights(cfg)  # backbone_weights="digits": pretrain.py's cached file
    torch.manual_seed(cfg.seed)
    n = 1 if cfg.method == "supervised" else 2
    nets = [DeepLabV3Plus(cfg.num_classes, cfg.backbone, cfg.output_stride, weights,
                          cfg.head_channels) for _ in range(n)]
    for other in nets[1:]:
        other.backbone.load_state_dict(nets[0].backbone.state_dict())
    return nets


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; biases and BatchNorm parameters get none."""
    decay, no_decay = [], []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            no_decay += [p for p in (m.weight, m.bias) if p is not None]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(net: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    groups = param_groups(net, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr)


def lr_at(it: int, cfg: Config) -> float:
    """Linear warm-up for ``warmup_iters``, then poly decay base·(1 − it/T)^power per iteration."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    return cfg.lr * (1 - it / cfg.iterations) ** cfg.poly_power


def unsup_weight_at(it: int, cfg: Config) -> float:
    """λ: 0 during the supervised-only start, then a linear ramp to ``unsup_weight`` (paper: λ from 0)."""
    if it < cfg.sup_only_iters:
        return 0.0
    if cfg.rampup_iters > 0:
        return cfg.unsup_weight * min(1.0, (it - cfg.sup_only_iters + 1) / cfg.rampup_iters)
    return cfg.unsup_weight


# ------------------------------------------------------------------------------------------------
# losses and methods


def ohem_ce(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 50000,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """Online hard example mining CE (CPS/CPCL Cityscapes): keep pixels whose GT probability is at most
    max(thresh, the min_kept-th smallest GT probability); class-weighted mean. ``min_kept`` is per image."""
    logits = logits.float()
    valid = target != IGNORE
    n_valid = valid.sum()
    with torch.no_grad():
        prob = logits.softmax(1).gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
        prob = torch.where(valid, prob, torch.ones_like(prob))
        k = min_kept * target.shape[0]
        flat = prob.flatten()
        kth = flat.kthvalue(min(k, flat.numel())).values
        threshold = torch.maximum(kth, torch.tensor(thresh, device=prob.device))
        keep = valid & ((prob <= threshold) | (n_valid <= k))
    return F.cross_entropy(logits, torch.where(keep, target, IGNORE), weight=weight, ignore_index=IGNORE)


@dataclass
class StepOut:
    loss: torch.Tensor
    parts: dict = field(default_factory=dict)  # scalar tensors, detached
    labels: object | None = None                # PseudoLabels of the step, for analysis
    mixed_truth: torch.Tensor | None = None     # true masks of the mixed image (analysis only)


def sup_loss(cfg: Config, logits, target):
    if cfg.sup_loss == "ohem":
        w = torch.tensor(CITYSCAPES_WEIGHTS, device=logits.device) if cfg.num_classes == 19 else None
        return ohem_ce(logits, target, weight=w)
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)


def supervised_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
                    all_reduce=None) -> StepOut:
    (net,) = nets
    loss = sup_loss(cfg, net(batch.x_l), batch.y_l)
    return StepOut(loss, {"sup1": loss.detach()})


def _teachers(nets, batch, mask):
    """Mixed teacher logits of both nets. Four separate no-grad passes, not one concatenated pass:
    BatchNorm is in train mode (as in the official code), so batching u0 with u1 would change the
    batch statistics, and therefore the logits, of both."""
    with torch.no_grad():
        return [mix(net(batch.u0), net(batch.u1), mask) for net in nets]


def _cutmix(batch, gen):
    b, _, h, w = batch.u0.shape
    mask = cutmix_box_masks(b, (h, w), generator=gen).to(batch.u0.device)
    truth = mix(batch.u0_mask, batch.u1_mask, mask) if batch.u0_mask is not None else None
    return mask, mix(batch.u0, batch.u1, mask), truth


def cps_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
             all_reduce=None) -> StepOut:
    """Cross pseudo supervision: each net learns from the other's hard label on the CutMix image."""
    net1, net2 = nets
    s1, s2 = sup_loss(cfg, net1(batch.x_l), batch.y_l), sup_loss(cfg, net2(batch.x_l), batch.y_l)
    parts = {"sup1": s1.detach(), "sup2": s2.detach()}
    if lam == 0:
        return StepOut(s1 + s2, parts)
    mask, u_mix, truth = _cutmix(batch, gen)
    t1, t2 = _teachers(nets, batch, mask)
    labels = pseudo_supervision(t1, t2, reweight=False)
    u1 = weighted_ce(net1(u_mix), labels.y2)
    u2 = weighted_ce(net2(u_mix), labels.y1)
    parts.update(unsup1=u1.detach(), unsup2=u2.detach())
    return StepOut(s1 + s2 + lam * (u1 + u2), parts, labels, truth)


def cpcl_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
              all_reduce=None) -> StepOut:
    """CPCL (method notes §4): net 1 learns the intersection label, net 2 the union label, each
    pixel's CE weighted by the teachers' confidence; L = CE1 + CE2 + λ(L_inter + L_union)."""
    net1, net2 = nets
    s1, s2 = sup_loss(cfg, net1(batch.x_l), batch.y_l), sup_loss(cfg, net2(batch.x_l), batch.y_l)
    parts = {"sup1": s1.detach(), "sup2": s2.detach()}
    if lam == 0:  # supervised-only start (CPU presets): skip the four teacher and two student passes
        return StepOut(s1 + s2, parts)
    mask, u_mix, truth = _cutmix(batch, gen)
    t1, t2 = _teachers(nets, batch, mask)
    labels = pseudo_supervision(t1, t2, union_rule=cfg.union_rule, reweight=cfg.reweight,
                                all_reduce=all_reduce)
    target = {"inter": (labels.inter, labels.w_inter), "union": (labels.union, labels.w_union)}
    u1 = weighted_ce(net1(u_mix), *target[cfg.targets[0]])
    u2 = weighted_ce(net2(u_mix), *target[cfg.targets[1]])
    parts.update(unsup1=u1.detach(), unsup2=u2.detach())
    return StepOut(s1 + s2 + lam * (u1 + u2), parts, labels, truth)


METHOD_STEPS = {"supervised": supervised_step, "cps": cps_step, "cpcl": cpcl_step}


def label_stats(labels, truth: torch.Tensor | None, num_classes: int) -> dict[str, torch.Tensor]:
    """Pseudo-label statistics of one step (tensors; the loop moves them to the host when logging).

    coverage: fraction of pixels with an intersection label (agreement) — the union covers all.
    acc_*: accuracy of each label kind against the true masks, where the data set has them.
    ind_c: the class-wise disagreement indicator; inter_frac_c: of the pixels whose union label is
    class c, the fraction that also carry an intersection label.
    """
    s = {"agreement": agreement(labels.y1, labels.y2),
         "w_inter": labels.w_inter.mean(), "w_union": labels.w_union.mean(),
         "w_agree": labels.w_union[labels.agree].mean(),
         "w_disagree": labels.w_union[~labels.agree].mean()}
    union_counts = torch.bincount(labels.union.flatten(), minlength=num_classes)[:num_classes]
    inter_counts = torch.bincount(labels.union[labels.agree].flatten(), minlength=num_classes)[:num_classes]
    frac = inter_counts / union_counts.clamp(min=1)
    frac = torch.where(union_counts > 0, frac, torch.full_like(frac, float("nan")))
    for c in range(num_classes):
        s[f"ind_{c}"] = labels.indicator[c]
        s[f"inter_frac_{c}"] = frac[c]
    if truth is not None:
        known = truth != IGNORE
        denom = known.sum().clamp(min=1)
        s["acc_union"] = ((labels.union == truth) & known).sum() / denom
        s["acc_y1"] = ((labels.y1 == truth) & known).sum() / denom
        s["acc_y2"] = ((labels.y2 == truth) & known).sum() / denom
        inter_known = known & labels.agree
        s["acc_inter"] = ((labels.inter == truth) & inter_known).sum() / inter_known.sum().clamp(min=1)
    return s


# ------------------------------------------------------------------------------------------------
# the loop


@dataclass
class RunResult:
    config: Config
    nets: list
    history: pd.DataFrame
    metrics: dict
    out_dir: Path | None


def _eval_models(nets, branch: str):
    if len(nets) == 1:
        return nets[0]
    return {"1": nets[0], "2": nets[1], "ensemble": list(nets)}[branch]


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def _prepare_out(out_dir) -> Path | None:
    if out_dir is None:
        return None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise KitError(f"--out: cannot write to {out} ({e.strerror or e})") from None
    return out


def _wrap_ddp(nets, cfg: Config, device: torch.device, info: DistInfo):
    """DistributedDataParallel copies of the nets (the raw nets stay for checkpoints and eval).

    Each net is called several times per step (labeled, teachers, student) before one backward;
    that is fine for DDP without find_unused_parameters, since every parameter is used once in
    the graph that backward walks.
    """
    if not info.enabled:
        return nets
    from torch.nn.parallel import DistributedDataParallel as DDP

    if cfg.sync_bn:
        nets[:] = [nn.SyncBatchNorm.convert_sync_batchnorm(n) for n in nets]
    ids = [device.index] if device.type == "cuda" else None
    return [DDP(n, device_ids=ids) for n in nets]


def train(cfg: Config, out_dir=None, resume: bool = False, progress: bool = True,
          data=None, stop_at: int | None = None) -> RunResult:
    """Train ``cfg.method`` and evaluate it; with ``out_dir``, write config.json, history.csv,
    checkpoint.pt and metrics.json there. ``resume=True`` continues from ``out_dir/checkpoint.pt``
    exactly (the batches, CutMix masks and augmentations of iteration i depend on (seed, i) only).
    ``stop_at=k`` pauses after iteration k with a checkpoint and no evaluation (metrics empty).
    Under torchrun every process trains on its shard of each batch; rank 0 alone writes files."""
    info = init_from_env()
    out = _prepare_out(out_dir) if info.main else None
    device = pick_device(cfg.device, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    else:
        # Denormal floats (|x| < 1.2e-38) appear as a CPU run converges and are very slow to compute
        # with: a benchmark-preset CPS run went from 1.7 to 5.5 s per step; flushing them to zero made
        # the same resumed steps 2.4x faster (4.2 vs 10.3 s on a loaded machine).
        torch.set_flush_denormal(True)
    data = data or build_data(cfg)
    nets = build_nets(cfg)
    opts = [make_optimizer(n, cfg) for n in nets]
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    history: list[dict] = []
    start = 0
    if resume:
        path = Path(out_dir) / ckpt.CHECKPOINT if out_dir is not None else None
        if path is None or not path.exists():
            raise KitError(f"--resume: no checkpoint to resume in {path}")
        state = ckpt.load(path)
        ckpt.check_compatible(state, cfg, path)
        start, history = ckpt.restore(state, nets, opts, scaler)
    for net in nets:
        net.to(device).train()
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
    models = _wrap_ddp(nets, cfg, device, info)
    if out is not None:
        _write_json_atomic(out / "config.json", {**cfg.to_dict(), "deviations_from_paper": (
            {k: v for k, v in DEVIATIONS.items() if k in PRESETS[cfg.preset]} if cfg.dataset == "digits" else {})})

    step_fn = METHOD_STEPS[cfg.method]
    shard = dict(start=start, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                 rank=info.rank, world_size=info.world_size)
    if cfg.method == "supervised":
        batches = supervised_batches(data.labeled, cfg.batch_size, cfg.iterations, cfg.seed, **shard)
    else:
        batches = semi_supervised_batches(data.labeled, data.unlabeled, cfg.batch_size,
                                          cfg.unlabeled_batch_size, cfg.iterations, cfg.seed, **shard)
    reduce = all_reduce_sum if info.enabled else None
    t0 = time.perf_counter()
    elapsed_before = history[-1]["seconds"] if history else 0.0
    bar = tqdm(total=cfg.iterations, initial=start, disable=not (progress and info.main),
               desc=cfg.method, dynamic_ncols=True)
    running = {}
    bad_it = torch.tensor(-1, device=device)
    last_saved = start

    def save_checkpoint(done):
        # One huge step after a finite loss can still leave inf weights: never save those.
        if not all(torch.isfinite(p).all() for n in nets for p in n.parameters()):
            _diverged(out, done - 1, last_saved, history)
        if out is not None:
            ckpt.save(out / ckpt.CHECKPOINT, cfg, done, nets, opts, scaler, history)
            pd.DataFrame(history).to_csv(out / "history.csv", index=False)

    for it, batch in enumerate(batches, start=start):
        batch = batch.to(device)
        if cfg.channels_last:
            batch.x_l = batch.x_l.contiguous(memory_format=torch.channels_last)
        lr, lam = lr_at(it, cfg), unsup_weight_at(it, cfg)
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)  # CutMix boxes of iteration it
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out_step = step_fn(models, batch, cfg, lam, gen, all_reduce=reduce)
        loss = out_step.loss
        # Remember the first non-finite iteration on the device: no host sync inside the step.
        bad_it = torch.where((bad_it < 0) & ~torch.isfinite(loss.detach()), it, bad_it)
        scaler.scale(loss).backward()
        for opt in opts:
            scaler.step(opt)
        scaler.update()
        for k, v in {"loss": loss.detach(), **out_step.parts}.items():
            running[k] = running.get(k, 0) + v.float()
        done = it + 1
        if done % cfg.log_every == 0 or done == cfg.iterations:
            if int(bad_it) >= 0:  # the one host sync, at the logging interval
                _diverged(out, int(bad_it), last_saved, history)
            n = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
            row = {"iteration": done, "lr": lr, "lambda": lam,
                   **{k: float(v) / n for k, v in running.items()}}
            if out_step.labels is not None:
                row.update({k: float(v) for k, v in label_stats(out_step.labels, out_step.mixed_truth,
                                                                  cfg.num_classes).items()})
            row["seconds"] = elapsed_before + time.perf_counter() - t0
            history.append(row)
            running = {}
            bar.set_postfix(loss=f"{row['loss']:.3f}",
                            **({"agree": f"{row['agreement']:.2f}"} if "agreement" in row else {}))
            if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                save_checkpoint(done)
                last_saved = done
        bar.update(1)
        if stop_at is not None and done >= stop_at:
            save_checkpoint(done)
            bar.close()
            return RunResult(cfg, nets, pd.DataFrame(history), {}, out)
    bar.close()
    train_seconds = elapsed_before + time.perf_counter() - t0
    hist = pd.DataFrame(history)
    metrics = {}
    if info.main:  # the others wait: evaluation needs no sharding at these sizes
        metrics = evaluate_run(cfg, nets, data, progress=progress)
        metrics.update(method=cfg.method, iterations=cfg.iterations, seconds=round(train_seconds, 2),
                       preset=cfg.preset, seed=cfg.seed, labeled=cfg.labeled,
                       world_size=info.world_size)
        if out is not None:
            hist.to_csv(out / "history.csv", index=False)
            _write_json_atomic(out / "metrics.json", metrics)
    barrier()
    return RunResult(cfg, nets, hist, metrics, out)


def evaluate_run(cfg: Config, nets, data, progress: bool = True) -> dict:
    """mIoU of the evaluated branch (net 1 by default) on the validation set, plus digit-only mIoU."""
    res = evaluate(_eval_models(nets, cfg.eval_branch), data.val, cfg.num_classes,
                   crop=cfg.eval_crop, stride_ratio=cfg.eval_stride, progress=progress)
    for net in nets:
        net.train()
    per_class = [None if math.isnan(v) else v for v in res["per_class_iou"]]
    m = {"miou": res["miou"], "per_class_iou": per_class, "pixel_acc": res["pixel_acc"],
         "class_names": list(data.class_names)}
    if cfg.dataset == "digits":
        fg = [v for v in per_class[1:] if v is not None]
        m["digit_miou"] = sum(fg) / len(fg) if fg else float("nan")
    if not math.isfinite(m["miou"]):
        raise KitError("evaluation gave a non-finite mIoU: the validation set has no labeled pixels")
    return m


def _diverged(out: Path | None, bad: int, last_good: int, history: list) -> None:
    if out is not None and (out / ckpt.CHECKPOINT).exists():
        kept = f"the last good checkpoint (iteration {last_good}) is kept in {out / ckpt.CHECKPOINT}"
    else:
        kept = "no checkpoint had been written yet"
    msg = (f"training diverged: the loss became NaN or infinite at iteration {bad + 1}; {kept}; "
           f"lower lr or check the data")
    if out is not None:
        _write_json_atomic(out / "diverged.json", {"iteration": bad + 1, "last_good_iteration": last_good,
                                                   "message": msg})
        if history:
            pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    raise TrainingDiverged(msg)


def run_or_load(cfg: Config, out_dir, progress: bool = True) -> RunResult:
    """Train into ``out_dir``, or load the finished run there (same config) without retraining.

    Notebooks share runs this way: ``make demo`` trains the demo CPCL run once for several of them.
    A folder with a checkpoint but no metrics.json is an unfinished run and is resumed.
    """
    out = Path(out_dir)
    if (out / "metrics.json").exists() and (out / ckpt.CHECKPOINT).exists():
        state = ckpt.load(out / ckpt.CHECKPOINT)
        ckpt.check_compatible(state, cfg, out / ckpt.CHECKPOINT)
        nets = build_nets(cfg)
        for net, sd in zip(nets, state["nets"]):
            net.load_state_dict(sd)
        metrics = json.loads((out / "metrics.json").read_text())
        return RunResult(cfg, nets, pd.DataFrame(state["history"]), metrics, out)
    return train(cfg, out_dir=out, resume=(out / ckpt.CHECKPOINT).exists(), progress=progress)
