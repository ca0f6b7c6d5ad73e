"""One training loop for every method; a method is a step function (``method.steps``).

``train`` runs the loop: it builds the nets and their optimizers (``Trainer``), resumes a
checkpoint exactly, steps through the batches with the lr schedule and λ ramp, logs (history.csv,
and TensorBoard through ``tblog``), checkpoints and evaluates (every ``eval_every`` iterations into
a validation curve, and at the end). ``run_or_load`` adds the run-folder policy that notebooks and grids use: lock the
folder, reuse a finished run with the same settings, resume an interrupted one, keep stage
snapshots on the way. The folder itself (files, the same-run rule, the lock) is ``runs``'.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import files
from ..config import Config, check_ready_to_train, check_weights_file
from ..data.build import build_data
from ..data.loaders import semi_supervised_batches, supervised_batches
from ..errors import KitError
from .. import registry
from ..method.steps import StepOut, label_stats
from ..method.variants import each
from ..nets.deeplab import build_nets
from ..nets.pretrain import fingerprint, resolve_backbone_weights, warn_if_other_init
from ..provenance import code_version
from . import checkpoint, runs
from .distributed import (DistInfo, all_ok, all_reduce_sum, barrier, env_local_rank, first_bad_iteration,
                          process_group)
from .evaluate import evaluate
from .runs import RunResult
from .tblog import NoBoard, open_board

class TrainingDiverged(KitError):
    """The loss became NaN or infinite."""


def nets_for(cfg: Config) -> list:
    """``nets.deeplab.build_nets`` with the named backbone weights resolved: ``backbone_weights="digits"``
    is the kit's pretrained digit backbone (``pretrain.py``), trained and cached on first use."""
    return build_nets(dataclasses.replace(cfg, backbone_weights=resolve_backbone_weights(cfg)))


# ------------------------------------------------------------------------------------------------
# devices, optimizers, schedule


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
# one optimisation step


def _one_torch_thread() -> None:
    # Per-thread settings: a new thread has its own OpenMP team size and its own floating-point
    # control word, so the CPU loop's denormal flushing (setup_device) is set here too.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


@functools.cache
def _net_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(2, thread_name_prefix="cpcl-net", initializer=_one_torch_thread)


def on_threads(fn, items) -> list:
    """``method.variants.each`` over two threads of one torch thread each: the two nets of a step
    work at once, each net's arithmetic as on one thread."""
    return list(_net_pool().map(fn, items))


@dataclass
class Trainer:
    """The nets of one run and what updates them: optimizers, grad scaler and autocast dtype.

    ``nets`` are the plain modules (checkpoints, evaluation); ``models`` what the step calls (the
    same nets, or their DistributedDataParallel wrappers under torchrun)."""

    cfg: Config
    device: torch.device
    nets: list
    opts: list
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    models: list | None = None
    par: object = each  # how the step maps work over the nets: in turn, or ``on_threads``

    @classmethod
    def create(cls, cfg: Config, device: torch.device) -> "Trainer":
        nets = nets_for(cfg)
        for net in nets:  # on the device before any optimizer state is restored into them
            net.to(device).train()
            if cfg.channels_last:
                net.to(memory_format=torch.channels_last)
        dtype = amp_dtype(device, cfg.amp)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        # Two nets on a CPU in fp32: one thread each. (A GPU runs its kernels asynchronously already,
        # and autocast is per thread.)
        par = on_threads if cfg.net_threads and len(nets) == 2 and device.type == "cpu" and dtype is None else each
        return cls(cfg, device, nets, [make_optimizer(n, cfg) for n in nets], scaler, dtype, nets, par)

    def wrap_ddp(self, info: DistInfo) -> None:
        """DistributedDataParallel copies of the nets for the step (the raw nets stay for checkpoints
        and evaluation). Each net is called several times per step (labeled, teachers, student)
        before one backward; that is fine for DDP without find_unused_parameters, since every
        parameter is used once in the graph that backward walks.

        ``broadcast_buffers=False``: by default DDP copies rank 0's BatchNorm statistics into every
        rank in place at each of those calls, and a later call then overwrites statistics that an
        earlier call's graph saved for backward (torch 2.11 stops with "modified by an inplace
        operation" on rank 1). Each rank keeps its own running statistics instead (SyncBatchNorm,
        ``sync_bn=true``, shares the batch statistics themselves); rank 0's are the ones saved."""
        if not info.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.par = each  # DDP's collectives run in the order of the calls, from one thread

        if self.cfg.sync_bn:
            self.nets[:] = [nn.SyncBatchNorm.convert_sync_batchnorm(n) for n in self.nets]
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.models = [DDP(n, device_ids=ids, broadcast_buffers=False) for n in self.nets]

    def step(self, step_fn, batch, it: int, lam: float | None = None, all_reduce=None) -> StepOut:
        """Iteration ``it``: set the lr (and λ, unless given), run ``step_fn`` under autocast,
        backward, one optimizer step per net. The CutMix boxes of iteration ``it`` come from a
        generator seeded by (seed, it), so a resumed run draws the same ones."""
        lr = lr_at(it, self.cfg)
        lam = unsup_weight_at(it, self.cfg) if lam is None else lam
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + it)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = step_fn(self.models, batch, self.cfg, lam, gen, all_reduce=all_reduce, par=self.par)
        if self.par is each or out.per_net is None:
            self.scaler.scale(out.loss).backward()
            for opt in self.opts:
                self.scaler.step(opt)
        else:  # each net's backward and update on its own thread (no scaler: fp32 only)
            def update(k):
                out.per_net[k].backward()
                self.opts[k].step()

            self.par(update, range(len(self.opts)))
        self.scaler.update()
        return out

    def weights_finite(self) -> bool:
        return all(torch.isfinite(p).all() for n in self.nets for p in n.parameters())


# ------------------------------------------------------------------------------------------------
# the loop


def setup_device(cfg: Config, device: torch.device) -> torch.device:
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    else:
        # Denormal floats (|x| < 1.2e-38) appear as a CPU run converges and are very slow to compute
        # with: a benchmark-preset CPS run went from 1.7 to 5.5 s per step; flushing them to zero made
        # the same resumed steps 2.4x faster (4.2 vs 10.3 s on a loaded machine).
        torch.set_flush_denormal(True)
    return device


def _resume(trainer: Trainer, out_dir) -> tuple[int, list[dict], list[dict]]:
    """(iteration, history, validation curve) of the checkpoint in ``out_dir``, restored into ``trainer``."""
    path = Path(out_dir) / runs.CHECKPOINT if out_dir is not None else None
    if path is None or not path.exists():
        raise KitError(f"--resume: no checkpoint to resume in {path}")
    state = checkpoint.load(path)
    runs.check_same_run(out_dir, trainer.cfg, saved=state["config"])
    start, history = checkpoint.restore(state, trainer.nets, trainer.opts, trainer.scaler)
    curve = state.get("val_curve")
    return start, history, [dict(r) for r in curve] if isinstance(curve, list) else []


def _batches(cfg: Config, data, start: int, device: torch.device, info: DistInfo):
    shard = dict(start=start, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                 rank=info.rank, world_size=info.world_size)
    if not registry.method(cfg.method).unlabeled:
        return supervised_batches(data.labeled, cfg.batch_size, cfg.iterations, cfg.seed, **shard)
    return semi_supervised_batches(data.labeled, data.unlabeled, cfg.batch_size, cfg.unlabeled_batch_size,
                                   cfg.iterations, cfg.seed, pairs=cfg.cutmix_boxes > 0, **shard)


def batch_to(batch, device: torch.device, channels_last: bool = False):
    """``batch`` on ``device`` (asynchronous copies); with ``channels_last`` every image tensor the
    nets see (labeled and both unlabeled batches) in that layout, as the nets are."""
    batch = batch.to(device)
    if channels_last:
        for name in ("x_l", "u0", "u1"):
            t = getattr(batch, name)
            if t is not None:
                setattr(batch, name, t.contiguous(memory_format=torch.channels_last))
    return batch


class _Log:
    """Running means of the step's losses, one history row per ``log_every`` iterations."""

    def __init__(self, cfg: Config, history: list[dict], seconds_before: float):
        self.cfg, self.history, self.sums, self.count = cfg, history, {}, 0
        self.t0, self.before, self.watching = time.perf_counter(), seconds_before, 0.0

    def add(self, out: StepOut) -> None:
        for k, v in {"loss": out.loss.detach(), **out.parts}.items():
            self.sums[k] = self.sums.get(k, 0) + v.float()
        self.count += 1

    def due(self, done: int) -> bool:
        return done % self.cfg.log_every == 0 or done == self.cfg.iterations

    def row(self, done: int, out: StepOut) -> dict:
        """The history row for iterations up to ``done`` (host syncs here, at the logging interval)."""
        # Divide by the iterations actually summed: a run resumed between two logging points sums
        # fewer than log_every before its first row.
        n = max(self.count, 1)
        row = {"iteration": done, "lr": lr_at(done - 1, self.cfg), "lambda": unsup_weight_at(done - 1, self.cfg),
               **{k: float(v) / n for k, v in self.sums.items()}}
        if out.labels is not None:
            stats = label_stats(out.labels, out.mixed_truth, self.cfg.num_classes)
            row.update({k: float(v) for k, v in stats.items()})
        row["seconds"] = self.seconds()
        self.history.append(row)
        self.sums, self.count = {}, 0
        return row

    def seconds(self) -> float:
        """Training seconds so far; the evaluations and TensorBoard images on the way (``watching``)
        are not counted, so that runs with and without them compare."""
        return self.before + time.perf_counter() - self.t0 - self.watching


def _save(trainer: Trainer, out: Path | None, done: int, last_good: int, history: list,
          curve: list | None = None) -> None:
    # One huge step after a finite loss can still leave inf weights: never save those.
    if not trainer.weights_finite():
        _diverged(out, done - 1, last_good, history)
    if out is not None:
        t = trainer
        runs.save_checkpoint(out / runs.CHECKPOINT, t.cfg, done, t.nets, t.opts, t.scaler, history, curve)
        files.write_csv(out / runs.HISTORY, pd.DataFrame(history))


def _curve_row(iteration: int, m: dict) -> dict:
    return {"iteration": int(iteration), **{k: m[k] for k in ("miou", "digit_miou", "pixel_acc") if k in m}}


def _evaluate_during(trainer: Trainer, data, done: int, curve: list, out: Path | None, board,
                     progress: bool) -> dict:
    """Evaluate the reported branch (``eval_branch``) on the validation set at iteration ``done``;
    append it to ``curve`` (and val_curve.csv, TensorBoard). It leaves training as it was: the nets
    are put back in their own train/eval modes (``evaluate``), eval mode updates no BatchNorm
    statistic, and the RNG is forked, so the weights that follow are bit for bit those without it."""
    cfg = trainer.cfg
    with torch.random.fork_rng(devices=[]):
        m = _branch_metrics(cfg, _eval_models(trainer.nets, cfg.eval_branch), data, progress, leave=False)
    row = _curve_row(done, m)
    curve.append(row)
    if out is not None:
        files.write_csv(out / runs.VAL_CURVE, pd.DataFrame(curve))
    board.validation(done, row)
    return row


def _loop(trainer: Trainer, batches, start: int, history: list, out: Path | None, info: DistInfo,
          progress: bool, stop_at: int | None, data=None, curve: list | None = None,
          board: NoBoard | None = None) -> tuple[float, bool]:
    """Train from iteration ``start``; returns the training seconds (a resumed run's included) and
    whether it paused at ``stop_at``. Every ``eval_every`` iterations rank 0 evaluates the
    validation set into ``curve`` (before a checkpoint of the same iteration, which keeps it) while
    the other ranks wait; ``board`` gets the history rows, the evaluations and the pseudo-label
    images (rank 0 only)."""
    cfg, device = trainer.cfg, trainer.device
    curve = [] if curve is None else curve
    board = board or NoBoard()
    step_fn = registry.method(cfg.method).step
    reduce = all_reduce_sum if info.enabled else None
    log = _Log(cfg, history, history[-1]["seconds"] if history else 0.0)
    bad_it = torch.tensor(-1, device=device)
    last_saved = start
    with tqdm(total=cfg.iterations, initial=start, disable=not (progress and info.main), desc=cfg.method,
              dynamic_ncols=True) as bar:
        for it, batch in enumerate(batches, start=start):
            batch = batch_to(batch, device, cfg.channels_last)
            out_step = trainer.step(step_fn, batch, it, all_reduce=reduce)
            # Remember the first non-finite iteration on the device: no host sync inside the step.
            bad_it = torch.where((bad_it < 0) & ~torch.isfinite(out_step.loss.detach()), it, bad_it)
            log.add(out_step)
            done = it + 1
            logged = log.due(done)
            if logged:
                bad = first_bad_iteration(bad_it)  # the one host sync, at the logging interval
                if bad >= 0:
                    _diverged(out, bad, last_saved, history)
                row = log.row(done, out_step)
                board.row(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}",
                                **({"agree": f"{row['agreement']:.2f}"} if "agreement" in row else {}))
            t_watch = time.perf_counter()
            if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done < cfg.iterations:
                if info.main:  # the last iteration is the run's own evaluation, after the loop
                    val = _evaluate_during(trainer, data, done, curve, out, board, progress)
                    if progress:
                        bar.write(f"iteration {done}: validation mIoU {100 * val['miou']:.2f}")
                barrier()
            if board.images_due(done):
                with torch.random.fork_rng(devices=[]):
                    board.pseudo_labels(done, trainer.nets, data)
            log.watching += time.perf_counter() - t_watch
            if logged and (done % cfg.checkpoint_every == 0 or done == cfg.iterations):
                _save(trainer, out, done, last_saved, history, curve)
                last_saved = done
            bar.update(1)
            if stop_at is not None and done >= stop_at:
                _save(trainer, out, done, last_saved, history, curve)
                return log.seconds(), True
    return log.seconds(), False


def train(cfg: Config, out_dir=None, resume: bool = False, progress: bool = True,
          data=None, stop_at: int | None = None, fresh: bool = False) -> RunResult:
    """Train ``cfg.method`` and evaluate it; with ``out_dir``, write config.json, history.csv,
    checkpoint.pt and metrics.json there (holding the folder's lock meanwhile). ``resume=True``
    continues from ``out_dir/checkpoint.pt`` exactly (the batches, CutMix masks and augmentations of
    iteration i depend on (seed, i) only). A folder that holds a run with other settings is refused
    (``runs.check_same_run``). ``stop_at=k`` pauses after iteration k with a checkpoint and no
    evaluation (metrics empty). Under torchrun every process trains on its shard of each batch;
    rank 0 alone writes files. With ``eval_every`` the metrics also hold ``val_curve`` (the
    evaluations during training, ending with this one) and ``best_on_val``; the top-level numbers
    stay the last iteration's.

    Without ``resume``, a folder that holds a checkpoint or metrics of this run is refused unless
    ``fresh=True``, which starts it over (``runs.start_over``: its metrics go first, so the folder
    never shows old metrics beside new weights). A run killed after hours would otherwise start
    over from iteration 0 when its command is typed again without --resume, and overwrite its
    checkpoint at the first save."""
    if resume and fresh:
        raise KitError("--resume and --fresh: choose one (--resume continues the run in --out, --fresh "
                       "starts it over)")
    check_ready_to_train(cfg)  # e.g. a paper preset without its pretrained backbone: refused here
    check_weights_file(cfg)
    # The commit of the code that trains, read (once per process) as the first run starts, not when a
    # run ends: a commit made while a long grid trains is not credited with the runs it finishes.
    code = code_version()
    device = pick_device(cfg.device, env_local_rank())
    with process_group(device) as info, ExitStack() as held:
        out = _take_folder(held, info, out_dir, cfg, wait=False, start=(resume, fresh)) \
            if out_dir is not None else None
        setup_device(cfg, device)
        data = data or build_data(cfg)
        trainer = Trainer.create(cfg, device)
        init = fingerprint(cfg)
        if info.main:
            warn_if_other_init(init)
        start, history, curve = _resume(trainer, out_dir) if resume else (0, [], [])
        trainer.wrap_ddp(info)
        if out is not None:
            runs.write_config(out, cfg)
            # the curve as the checkpoint has it: an evaluation made after it by a killed attempt goes
            if curve:
                files.write_csv(out / runs.VAL_CURVE, pd.DataFrame(curve))
            else:
                (out / runs.VAL_CURVE).unlink(missing_ok=True)
        board = held.enter_context(closing(open_board(cfg, out, start, data.class_names, info.main)))
        batches = _batches(cfg, data, start, device, info)
        seconds, paused = _loop(trainer, batches, start, history, out, info, progress, stop_at, data, curve,
                                board)
        hist = pd.DataFrame(history)
        if paused:  # the next train() of every rank must find rank 0's checkpoint written
            barrier()
            return RunResult(cfg, trainer.nets, hist, {}, out)
        metrics = {}
        if info.main:  # the others wait: evaluation needs no sharding at these sizes
            metrics = evaluate_run(cfg, trainer.nets, data, progress=progress)
            metrics.update(method=cfg.method, iterations=cfg.iterations, seconds=round(seconds, 2),
                           preset=cfg.preset, seed=cfg.seed, labeled=cfg.labeled, world_size=info.world_size,
                           backbone_init=init, code=code)
            board.validation(cfg.iterations, metrics)
            if cfg.eval_every > 0 or curve:  # the curve ends with the run's own evaluation
                curve = [r for r in curve if r["iteration"] < cfg.iterations] + [_curve_row(cfg.iterations, metrics)]
                metrics.update(val_curve=curve, best_on_val=runs.best_on_val(curve))
            if out is not None:
                files.write_csv(out / runs.HISTORY, hist)
                if curve:
                    files.write_csv(out / runs.VAL_CURVE, pd.DataFrame(curve))
                files.write_json(out / runs.METRICS, metrics)
        barrier()
        return RunResult(cfg, trainer.nets, hist, metrics, out)


def _take_folder(held: ExitStack, info: DistInfo, run_dir, cfg: Config, wait: bool,
                 start: tuple[bool, bool] | None = None) -> Path | None:
    """Rank 0 prepares ``run_dir``, takes its lock (held until ``held`` closes), removes the temp
    files of writes a kill cut short, and checks that it holds this run or none; returns the folder
    there, None on the other ranks. ``start``: ``train``'s (resume, fresh), to apply its rule for a
    folder that already holds this run (``_check_start``); None: the caller decides (``run_or_load``).
    Every rank learns whether that worked, so a refused folder stops all of them (none waits in DDP
    set-up for a rank 0 that raised). Only rank 0 locks: a rank waiting for rank 0's lock while
    rank 0 waits for it in a collective would hang both."""
    out, error = None, None
    if info.main:
        try:
            out = runs.prepare(run_dir)
            held.enter_context(files.lock(out, wait=wait))
            runs.check_same_run(out, cfg)
            # The lock is ours, so no live process writes the folder's files: any temp file of
            # theirs is left by a killed writer.
            runs.remove_stale_temps(out)
            if start is not None:
                _check_start(out, *start)
        except KitError as e:
            error = e
    if not all_ok(error is None):
        raise error or KitError(f"rank 0 could not use the run folder {run_dir} (its error says why)")
    return out


def _check_start(out: Path, resume: bool, fresh: bool) -> None:
    """``train``'s rule for a folder that already holds this run: ``resume`` continues it; a
    checkpoint or metrics without ``resume`` is refused unless ``fresh``; a run that starts from
    iteration 0 first clears what an earlier attempt left (``runs.start_over``)."""
    if resume:
        return
    found = runs.state(out)
    if found != "new" and not fresh:
        what = ("a finished run of these settings (metrics.json)" if found == "finished" else
                "an interrupted run of these settings (a checkpoint, no metrics.json)")
        cont = "evaluate its checkpoint again" if found == "finished" else "continue it"
        raise KitError(f"{out} holds {what}; pass --resume to {cont}, --fresh to start it over (its "
                       f"checkpoint and metrics are removed first), or use another folder")
    runs.start_over(out)


def _eval_models(nets, branch: str):
    if len(nets) == 1:
        return nets[0]
    return {"1": nets[0], "2": nets[1], "ensemble": list(nets)}[branch]


def evaluate_run(cfg: Config, nets, data, progress: bool = True) -> dict:
    """mIoU, per-class IoU, pixel accuracy (and digit-only mIoU on digit scenes) of the evaluated
    branch (``eval_branch``: net 1 by default, as the paper reports) on the validation set.

    A two-net run scores net 1, net 2 and their ensemble (mean softmax) from one pass per net, under
    ``branches`` {"1", "2", "ensemble"}; the top-level numbers stay
    ``eval_branch``'s, so a table can show whether the progressive net or the pair beats the
    conservative net the paper reports."""
    if len(nets) == 2:  # one pass per net scores net 1, net 2 and their ensemble
        branches = _branch_metrics(cfg, list(nets), data, progress, branches=True)
    else:
        branches = {cfg.eval_branch: _branch_metrics(cfg, nets[0], data, progress)}
    for net in nets:
        net.train()
    m = {**branches[cfg.eval_branch], "class_names": list(data.class_names)}
    if len(nets) == 2:
        m["branches"] = branches
    return m


def _branch_metrics(cfg: Config, models, data, progress: bool, leave: bool = True,
                    branches: bool = False) -> dict:
    """The metrics of ``models`` on the validation set; ``branches``: {branch: metrics} of each of
    two nets and their ensemble, from one pass per net."""
    res = evaluate(models, data.val, cfg.num_classes, crop=cfg.eval_crop, stride_ratio=cfg.eval_stride,
                   progress=progress, leave=leave, branches=branches)
    if branches:
        return {b: _metrics(cfg, r) for b, r in res.items()}
    return _metrics(cfg, res)


def _metrics(cfg: Config, res: dict) -> dict:
    per_class = [None if math.isnan(v) else v for v in res["per_class_iou"]]
    m = {"miou": res["miou"], "per_class_iou": per_class, "pixel_acc": res["pixel_acc"]}
    extra = registry.dataset(cfg.dataset).metrics
    if extra is not None:
        m.update(extra(per_class))
    if not math.isfinite(m["miou"]):
        raise KitError("evaluation gave a non-finite mIoU: the validation set has no labeled pixels")
    return m


def _diverged(out: Path | None, bad: int, last_good: int, history: list) -> None:
    if out is not None and (out / runs.CHECKPOINT).exists():
        kept = f"the last good checkpoint (iteration {last_good}) is kept in {out / runs.CHECKPOINT}"
    else:
        kept = "no checkpoint had been written yet"
    msg = (f"training diverged: the loss became NaN or infinite at iteration {bad + 1}; {kept}; "
           f"lower lr or check the data")
    if out is not None:
        files.write_json(out / runs.DIVERGED, {"iteration": bad + 1, "last_good_iteration": last_good,
                                              "message": msg})
        if history:
            files.write_csv(out / runs.HISTORY, pd.DataFrame(history))
    raise TrainingDiverged(msg)


# ------------------------------------------------------------------------------------------------
# the run-folder policy


def run_or_load(cfg: Config, run_dir, progress: bool = True, data=None, stages: tuple[int, ...] = (),
                nets: bool = True, wait: bool = True) -> RunResult:
    """The run ``cfg`` in ``run_dir``: loaded when finished there, resumed exactly when interrupted,
    else trained from the start — under the folder's lock, so two processes never train it at once.

    A folder holding a run with other settings is refused (``runs.check_same_run``), never reused.
    ``stages``: iterations at which to keep the nets as stage snapshots (``runs.save_snapshot``);
    training pauses there (``train(stop_at=...)``) and resumes exactly, so the result equals one
    uninterrupted run. ``nets=False`` loads a finished run without its nets (a grid's checkpoints may
    be deleted). ``wait=False`` raises ``files.RunBusy`` at once if another process holds the folder;
    ``wait=True`` waits for it (and then usually finds its run finished).
    """
    run_dir = Path(run_dir)
    with process_group(pick_device(cfg.device, env_local_rank())) as info, ExitStack() as held:
        # Rank 0 holds the lock; the others read the folder rank 0 checked, before any of them writes
        # to it (rank 0 writes only after DDP set-up, which waits for every rank).
        _take_folder(held, info, run_dir, cfg, wait=wait)
        if not info.main:
            runs.check_same_run(run_dir, cfg)
        if runs.is_finished(run_dir):
            return runs.load_run(run_dir, cfg, nets=nets)
        if not stages:
            return train(cfg, out_dir=run_dir, resume=runs.has_checkpoint(run_dir), progress=progress, data=data)
        done = _checkpoint_iteration(run_dir)
        data = data or build_data(cfg)
        result = None
        for stop in sorted({s for s in stages if 0 < s < cfg.iterations} | {cfg.iterations}):
            if done is not None and stop <= done:
                continue
            last = stop == cfg.iterations
            result = train(cfg, out_dir=run_dir, resume=done is not None, progress=progress, data=data,
                           stop_at=None if last else stop)
            if not last and info.main:
                runs.save_snapshot(run_dir, cfg, stop, result.nets)
            done = stop
        if result is None:  # a checkpoint at the last iteration but no metrics: evaluate by resuming
            result = train(cfg, out_dir=run_dir, resume=True, progress=progress, data=data)
        return result


def _checkpoint_iteration(run_dir: Path) -> int | None:
    path = run_dir / runs.CHECKPOINT
    return int(checkpoint.load(path)["iteration"]) if path.exists() else None
