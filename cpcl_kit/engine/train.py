"""One training loop for every method; a method is a step function (``method.steps``).

``train`` runs the loop: it builds the nets and their optimizers (``trainer.Trainer``), resumes a
checkpoint exactly, steps through the batches with the lr schedule and λ ramp, logs (history.csv,
and TensorBoard through ``tblog``), checkpoints and evaluates (every ``eval_every`` iterations into
a validation curve, and at the end, ``evaluate.evaluate_run``). ``run_or_load`` adds the run-folder
policy that notebooks and grids use: lock the folder, reuse a finished run with the same settings,
resume an interrupted one, keep stage snapshots on the way. The folder itself (files, the same-run
rule, the lock) is ``runs``'; the device and precision ``device``'s.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, closing
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import files, registry
from ..config import Config, check_ready_to_train, check_weights_file
from ..data.build import build_data
from ..data.loaders import semi_supervised_batches, supervised_batches
from ..errors import KitError
from ..method.steps import StepOut, label_stats
from ..nets.pretrain import fingerprint, warn_if_other_init
from ..provenance import code_version
from . import checkpoint, runs
from .device import batch_to, pick_device, setup_device
from .distributed import (DistInfo, all_reduce_sum, barrier, env_local_rank, first_bad_iteration, mean_over_ranks,
                          process_group, with_rank0_buffers)
from .evaluate import branch_metrics, eval_models, evaluate_run
from .runs import RunResult
from .tblog import NoBoard, open_board
from .trainer import Trainer, lr_at, unsup_weight_at


class TrainingDiverged(KitError):
    """The loss became NaN or infinite."""


# ------------------------------------------------------------------------------------------------
# the loop


def _resume(trainer: Trainer, out_dir, world_size: int) -> tuple[int, list[dict], list[dict]]:
    """(iteration, history, validation curve) of the checkpoint in ``out_dir``, restored into ``trainer``.
    A checkpoint of another number of processes is refused: its global batch, data positions and
    BatchNorm statistics are those of that many processes."""
    path = Path(out_dir) / runs.CHECKPOINT if out_dir is not None else None
    if path is None or not path.exists():
        raise KitError(f"--resume: no checkpoint to resume in {path}")
    state = checkpoint.load(path)
    runs.check_same_run(out_dir, trainer.cfg, saved=state["config"])
    runs.check_same_world(path, state.get("world_size", 1), world_size)
    start, history = checkpoint.restore(state, trainer.nets, trainer.opts, trainer.scaler)
    curve = state.get("val_curve")
    return start, history, [dict(r) for r in curve] if isinstance(curve, list) else []


def training_batches(cfg: Config, data, start: int, device: torch.device, info: DistInfo | None = None):
    """The batches of iterations ``start`` .. ``cfg.iterations - 1`` of ``cfg``'s run on ``data``,
    as the loop takes them: this process's shard of each (``info``; the whole batch on one)."""
    info = info or DistInfo()
    shard = dict(start=start, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                 rank=info.rank, world_size=info.world_size)
    if not registry.method(cfg.method).unlabeled:
        return supervised_batches(data.labeled, cfg.batch_size, cfg.iterations, cfg.seed, **shard)
    return semi_supervised_batches(data.labeled, data.unlabeled, cfg.batch_size, cfg.unlabeled_batch_size,
                                   cfg.iterations, cfg.seed, pairs=cfg.cutmix_boxes > 0, **shard)


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
        # Under several processes every number is the mean over the processes' shards.
        n = max(self.count, 1)
        row = {"iteration": done, "lr": lr_at(done - 1, self.cfg), "lambda": unsup_weight_at(done - 1, self.cfg),
               **{k: v / n for k, v in _over_ranks(self.sums).items()}}
        if out.labels is not None:
            row.update(_over_ranks(label_stats(out.labels, out.mixed_truth, self.cfg.num_classes)))
        row["seconds"] = self.seconds()
        self.history.append(row)
        self.sums, self.count = {}, 0
        return row

    def seconds(self) -> float:
        """Training seconds so far; the evaluations and TensorBoard images on the way (``watching``)
        are not counted, so that runs with and without them compare."""
        return self.before + time.perf_counter() - self.t0 - self.watching


def _over_ranks(values: dict) -> dict[str, float]:
    """``values`` (0-dim tensors) as floats, each the mean over the processes (itself on one)."""
    keys = list(values)
    means = mean_over_ranks(torch.stack([values[k].detach().double() for k in keys]))
    return {k: float(v) for k, v in zip(keys, means.tolist())}


def _save(trainer: Trainer, out: Path | None, done: int, last_good: int, history: list,
          curve: list | None = None) -> None:
    # One huge step after a finite loss can still leave inf weights: never save those.
    if not trainer.weights_finite():
        _diverged(out, done - 1, last_good, history)
    if out is not None:
        t = trainer
        runs.save_checkpoint(out / runs.CHECKPOINT, t.cfg, done, t.nets, t.opts, t.scaler, history, curve,
                             t.world_size)
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
        nets = with_rank0_buffers(trainer.nets)
        m = branch_metrics(cfg, eval_models(nets, cfg.eval_branch), data, progress, leave=False)
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
    whether it paused at ``stop_at``. Every ``eval_every`` iterations the processes evaluate the
    validation set, each its shard, into ``curve`` (before a checkpoint of the same iteration, which
    keeps it); ``board`` gets the history rows, the evaluations and the pseudo-label images (rank 0
    only)."""
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
            # (the last iteration is the run's own evaluation, after the loop)
            if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done < cfg.iterations:
                val = _evaluate_during(trainer, data, done, curve, out, board, progress and info.main)
                if progress and info.main:
                    bar.write(f"iteration {done}: validation mIoU {100 * val['miou']:.2f}")
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
        out = runs.take_folder(held, info, out_dir, cfg, wait=False, start=(resume, fresh)) \
            if out_dir is not None else None
        setup_device(cfg, device)
        data = data or build_data(cfg)
        trainer = Trainer.create(cfg, device)
        init = fingerprint(cfg)
        if info.main:
            warn_if_other_init(init)
        start, history, curve = _resume(trainer, out_dir, info.world_size) if resume else (0, [], [])
        trainer.wrap_ddp(info)
        if out is not None:
            runs.write_config(out, cfg)
            # the curve as the checkpoint has it: an evaluation made after it by a killed attempt goes
            if curve:
                files.write_csv(out / runs.VAL_CURVE, pd.DataFrame(curve))
            else:
                (out / runs.VAL_CURVE).unlink(missing_ok=True)
        board = held.enter_context(closing(open_board(cfg, out, start, data.class_names, info.main)))
        batches = training_batches(cfg, data, start, device, info)
        seconds, paused = _loop(trainer, batches, start, history, out, info, progress, stop_at, data, curve,
                                board)
        hist = pd.DataFrame(history)
        if paused:  # the next train() of every rank must find rank 0's checkpoint written
            barrier()
            return RunResult(cfg, trainer.nets, hist, {}, out)
        # Every process evaluates its shard of the validation set; the counts are summed over them.
        metrics = evaluate_run(cfg, with_rank0_buffers(trainer.nets), data, progress=progress and info.main)
        metrics.update(method=cfg.method, iterations=cfg.iterations, seconds=round(seconds, 2),
                       preset=cfg.preset, seed=cfg.seed, labeled=cfg.labeled, world_size=info.world_size,
                       backbone_init=init, code=code)
        board.validation(cfg.iterations, metrics)
        if cfg.eval_every > 0 or curve:  # the curve ends with the run's own evaluation
            curve = [r for r in curve if r["iteration"] < cfg.iterations] + [_curve_row(cfg.iterations, metrics)]
            metrics.update(val_curve=curve, best_on_val=runs.best_on_val(curve))
        if out is not None:  # rank 0's folder
            files.write_csv(out / runs.HISTORY, hist)
            if curve:
                files.write_csv(out / runs.VAL_CURVE, pd.DataFrame(curve))
            files.write_json(out / runs.METRICS, metrics)
        barrier()
        return RunResult(cfg, trainer.nets, hist, metrics, out)


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
        runs.take_folder(held, info, run_dir, cfg, wait=wait)
        if not info.main:
            runs.check_same_run(run_dir, cfg)
        if runs.is_finished(run_dir):
            found = runs.load_run(run_dir, cfg, nets=nets)
            runs.check_same_world(run_dir / runs.METRICS, found.metrics.get("world_size", 1), info.world_size)
            return found
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
