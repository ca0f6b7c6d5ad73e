"""The run folder: what it holds, when it may be reused, who may write it.

One folder holds one training run::

    config.json          the settings, written when training starts
    history.csv          one row per logged iteration
    checkpoint.pt        nets, optimizers, RNG states (``checkpoint``'s format), for exact resume
    metrics.json         the evaluation, written last: its presence means "finished"
    val_curve.csv        validation mIoU during training (``eval_every``), one row per evaluation
    events.out.tfevents.*  TensorBoard's event files (``tensorboard``; ``tensorboard --logdir runs/``)
    diverged.json        only when the loss became NaN or infinite
    stages/iter_N.pt     stage snapshots: the nets' weights at chosen iterations (notebook 08)
    eval_metrics.json    only after ``python -m cpcl_kit evaluate`` of its checkpoint
    .lock                held by the process that trains here

**A folder's metrics belong to its weights.** ``metrics.json`` is written last, after the checkpoint
it scores. A run started over in a folder (``start_over``) removes it first, before any new weights
are written, so a kill at any moment leaves either a finished run or an unfinished one, never old
metrics beside new weights.

**The same-run rule.** A folder is reused (loaded, resumed, skipped by a grid) only for the very
run it holds: every ``Config`` field equal, except the few in ``BOOKKEEPING``, which change how a
run is carried out or logged, never what it computes. Anything else is one clear ``KitError`` that
names the folder and the fields that differ; nothing is overwritten.

``.lock`` is held by the process that trains in the folder (``files.lock``); every file here is
written atomically (``files.write_atomic``), and the temp files a killed writer left are removed
when the next holder of the lock starts (``remove_stale_temps``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files
from ..config import ADDED_FIELDS, PRESETS, Config, load_config_dict, plain
from ..deviations import deviations
from ..errors import KitError
from ..files import save_torch, write_json
from . import checkpoint
from .distributed import DistInfo, all_ok

CONFIG, HISTORY, CHECKPOINT, METRICS = "config.json", "history.csv", "checkpoint.pt", "metrics.json"
VAL_CURVE = "val_curve.csv"
DIVERGED, STAGES = "diverged.json", "stages"
EVAL_METRICS = "eval_metrics.json"  # written by `evaluate` beside the checkpoint it scored
TB_EVENTS = "events.out.tfevents.*"  # TensorBoard's event files (tblog)
# The files that only the holder of the folder's lock writes (regular expressions of their names):
# their temp files are never in use when the lock is taken. (eval_metrics.json is written by
# `evaluate` without the lock, so its temp files are left alone.) The write probe's temp file lives
# for microseconds and its prober does not mind it gone (files.probe_writable).
_LOCKED_FILES = "|".join(re.escape(n) for n in (CONFIG, HISTORY, CHECKPOINT, METRICS, VAL_CURVE, DIVERGED,
                                                files.PROBE[1:]))
_STAGE_FILES = r"iter_\d+\.pt"

# Config fields that do not make a different run, and why. Every other field does.
BOOKKEEPING = {
    "device": "where it runs; the same settings on CPU or GPU are the same experiment",
    "num_workers": "loader processes; a batch depends on (seed, iteration) only",
    "log_every": "how often a history row is written",
    "checkpoint_every": "how often the checkpoint is written; resume is exact from any of them",
    "cudnn_benchmark": "cuDNN's choice of kernel; the same arithmetic",
    "net_threads": "whether the two nets of a step run on two CPU threads; the same arithmetic",
    "preset": "the name the settings started from; the settings themselves are compared",
    # Watching a run: evaluation and TensorBoard run in eval mode without drawing from the training
    # RNGs, so the weights are bit for bit those of the same run without them (tests/test_watch.py).
    # A finished run asked for again with other values is loaded as it is; a resumed one goes on
    # with the new values from where it stopped.
    "eval_every": "how often the validation set is evaluated during training",
    "tensorboard": "whether TensorBoard event files are written",
    "tb_image_every": "how often TensorBoard gets an image of the pseudo labels",
}

def prepare(run_dir) -> Path:
    """Create ``run_dir`` and check that it is writable (one clear error if not; a link planted as
    its write probe is refused, see ``files.probe_writable``)."""
    out = Path(run_dir)
    try:
        files.probe_writable(out)
    except OSError as e:
        raise KitError(f"--out: cannot write to {out} ({e.strerror or e})") from None
    return out


def remove_stale_temps(run_dir) -> list[Path]:
    """Remove the temp files that writers killed mid-write left for the folder's own files (a
    checkpoint's can be as large as the checkpoint). Only for the holder of the folder's lock
    (``files.remove_stale_temps``); returns the files removed. A link planted as ``stages/`` is
    refused."""
    run_dir = Path(run_dir)
    stages = run_dir / STAGES
    if stages.is_symlink():  # snapshots would be written (and temp files removed) wherever it points
        raise KitError(f"{stages}: the folder's stage snapshots are a symbolic link to {os.readlink(stages)}; "
                       f"refused: the kit writes no file through a link it did not make (remove it)")
    return files.remove_stale_temps(run_dir, _LOCKED_FILES) + files.remove_stale_temps(stages, _STAGE_FILES)


def start_over(run_dir) -> None:
    """Clear ``run_dir`` for a run that starts from iteration 0: what a previous attempt left
    (metrics, evaluation, divergence record, checkpoint, history, validation curve, stage
    snapshots, TensorBoard events) describes other weights. ``metrics.json`` goes first and its
    removal is made durable before anything else, so that a kill at any point leaves a folder that
    does not look finished. config.json stays (the same-run rule has checked it). Under the
    folder's lock."""
    run_dir = Path(run_dir)
    _remove(run_dir / METRICS)
    files.fsync_folder(run_dir)
    old = [run_dir / n for n in (EVAL_METRICS, DIVERGED, CHECKPOINT, HISTORY, VAL_CURVE)]
    # TensorBoard's event files hold the earlier attempt's losses and validation scores too
    old = [p for p in old if p.exists() or p.is_symlink()] + list(list_stages(run_dir).values()) \
        + sorted(p for p in run_dir.glob(TB_EVENTS) if p.is_symlink() or not p.is_dir())
    for path in old:
        _remove(path)
    if old:
        files.fsync_folder(run_dir)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise KitError(f"{path}: cannot remove it to start the run over ({e.strerror or e}); expected a "
                       f"folder this user may write to") from None


def read_object(path, what: str) -> dict:
    """The JSON object in ``path`` (a run's config.json or metrics.json, ``what`` says which); one
    KitError naming the file when it cannot be read, is not JSON, or is not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise KitError(f"{path}: unreadable ({detail}); expected {what}") from None
    if not isinstance(data, dict):
        raise KitError(f"{path}: expected {what}, found a JSON {type(data).__name__}")
    return data


def write_config(run_dir, cfg: Config) -> Path:
    """``config.json``: the settings and what of them departs from the paper recipe (``config.deviations``)."""
    return write_json(Path(run_dir) / CONFIG, {**cfg.to_dict(), "deviations_from_paper": deviations(cfg)})


def save_checkpoint(path, cfg: Config, iteration: int, nets, opts, scaler, history: list[dict],
                    val_curve: list[dict] | None = None, world_size: int = 1) -> Path:
    """Both nets, optimizers, scaler, iteration, RNG states, history, validation curve and the number
    of processes that trained them, atomically."""
    return save_torch(path, checkpoint.make_state(cfg, iteration, nets, opts, scaler, history, val_curve, world_size))


def check_same_world(path, saved: int, now: int) -> None:
    """A run trained by ``saved`` processes is another run for ``now`` processes: each process takes
    batch_size images, so the global batch, the data positions of every iteration and the BatchNorm
    statistics all follow the number of processes. KitError in one line when they differ."""
    if int(saved) != int(now):
        raise KitError(f"{path}: this run was trained by {saved} process(es), and {now} would continue it with "
                       f"another global batch ({saved} x batch_size images per iteration, not {now} x); run it "
                       f"on {saved} process(es), or start it over (--fresh) or in another folder")


# ------------------------------------------------------------------------------------------------
# the same-run rule


def differing_settings(saved: dict, cfg: Config) -> list[str]:
    """Fields of ``cfg`` (outside ``BOOKKEEPING``) whose value differs from the saved config dict.
    A field the saved dict lacks (a folder from an older kit) counts as different, unless it is in
    ``ADDED_FIELDS``: then it counts as the value the older kit used."""
    now = cfg.to_dict()
    missing = object()
    return [k for k, v in now.items()
            if k not in BOOKKEEPING and plain(saved.get(k, ADDED_FIELDS.get(k, missing))) != plain(v)]


def check_same_run(run_dir, cfg: Config, saved: dict | None = None) -> None:
    """Raise a KitError naming the folder and the differing fields unless ``run_dir`` is empty or
    holds the run ``cfg`` describes. ``saved``: the folder's config (default: its config.json)."""
    run_dir = Path(run_dir)
    if saved is None:
        path = run_dir / CONFIG
        if not path.exists():
            return
        try:
            saved = read_object(path, "a run's settings (a JSON object)")
        except KitError as e:
            raise KitError(f"{e}; the folder's run is unknown, so it is not reused (delete the folder or "
                           f"use another)") from None
    diff = differing_settings(saved, cfg)
    if diff:
        now = cfg.to_dict()
        shown = "; ".join(f"{k}: folder {saved.get(k, '(not set)')!r}, now {plain(now[k])!r}" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise KitError(f"{run_dir} holds a run with other settings ({shown}{more}); use another folder "
                       f"for these settings, or delete that one")


def best_on_val(curve: list[dict]) -> dict | None:
    """The validation curve's highest mIoU and its iteration (the earliest on a tie), labelled as
    what it is: a choice made on the validation set, so it is no unbiased estimate of that choice;
    the kit reports the last iteration. None for an empty curve."""
    if not curve:
        return None
    best = max(curve, key=lambda r: (r["miou"], -r["iteration"]))
    return {"miou": best["miou"], "iteration": int(best["iteration"]),
            "note": "chosen on the validation set; the kit reports the last iteration"}


def read_val_curve(run_dir) -> pd.DataFrame:
    """A run folder's validation curve (``val_curve.csv``): iteration, miou, ...; empty when the run
    evaluated only at its end."""
    path = Path(run_dir) / VAL_CURVE
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["iteration", "miou"])


def is_finished(run_dir) -> bool:
    return (Path(run_dir) / METRICS).exists()


def state(run_dir) -> str:
    """"finished" (metrics.json), "interrupted" (a checkpoint, no metrics) or "new" (neither)."""
    return "finished" if is_finished(run_dir) else "interrupted" if has_checkpoint(run_dir) else "new"


def has_checkpoint(run_dir) -> bool:
    return (Path(run_dir) / CHECKPOINT).exists()


# ------------------------------------------------------------------------------------------------
# names the kit chooses


def slug(value) -> str:
    """A short file-name-safe text for a setting's value (long or odd values become a hash)."""
    text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    text = text.replace("/", "-")
    if len(text) > 24 or not all(c.isalnum() or c in "-.,+" for c in text):
        text = "h" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text


def run_dir_name(cfg: Config) -> str:
    """``{method}_{preset}_{labeled}_seed{seed}``, then ``__field-value`` for every other setting
    that differs from the preset (so two different runs never share a kit-named folder), e.g.
    ``cpcl_demo_1-16_seed0`` or ``cpcl_demo_1-16_seed0__unsup_weight-3.0``."""
    base = Config(**{**PRESETS.get(cfg.preset, {}), "preset": cfg.preset}).to_dict()
    now = cfg.to_dict()
    named = ("method", "labeled", "seed")
    extra = [f"{k}-{slug(v)}" for k, v in now.items()
             if k not in BOOKKEEPING and k not in named and plain(v) != plain(base[k])]
    suffix = "__" + "__".join(extra) if extra else ""
    if len(suffix) > 120:  # many overrides: one hash of them all keeps the name short and unique
        suffix = "__" + slug("".join(extra) * 2)
    return f"{cfg.method}_{cfg.preset}_{slug(cfg.labeled)}_seed{cfg.seed}{suffix}"


def notebook_run_dir(out_dir, cfg: Config) -> Path:
    """Where the notebooks keep the run of ``cfg``: ``out_dir/runs/<run_dir_name(cfg)>``; notebooks
    asking for the same run share it (``make demo`` trains the demo CPCL run once for 04–08)."""
    return Path(out_dir) / "runs" / run_dir_name(cfg)


def grid_run_name(variant: str, fraction: str, seed: int) -> str:
    """Folder name of one ablation-grid run: ``cpcl__1-16__seed0``."""
    return f"{variant}__{str(fraction).replace('/', '-')}__seed{seed}"


# ------------------------------------------------------------------------------------------------
# finished runs and stage snapshots


@dataclass
class RunResult:
    config: Config
    nets: list             # the trained nets (empty when loaded without them)
    history: pd.DataFrame
    metrics: dict          # empty for a paused run (train(stop_at=...))
    out_dir: Path | None


def load_run(run_dir, cfg: Config | None = None, nets: bool = True, device="cpu") -> RunResult:
    """A finished run folder as a ``RunResult``: ``cfg`` (checked with the same-run rule; default the
    folder's own config), the nets from its checkpoint in eval mode (``nets=False``: none), its
    history and metrics."""
    run_dir = Path(run_dir)
    if not is_finished(run_dir):
        raise KitError(f"{run_dir}: not a finished run (no {METRICS})")
    metrics = read_metrics(run_dir)
    if cfg is None:
        cfg = load_config_dict(read_object(run_dir / CONFIG, "a run's settings (a JSON object)"))
    else:
        check_same_run(run_dir, cfg)
    loaded = []
    if nets:
        if not has_checkpoint(run_dir):
            raise KitError(f"{run_dir}: the run is finished but its {CHECKPOINT} was deleted (a grid with "
                           f"keep_checkpoints=False); its numbers are in {METRICS}")
        _, loaded = checkpoint.load_nets(run_dir / CHECKPOINT, device=device)
    history = pd.read_csv(run_dir / HISTORY) if (run_dir / HISTORY).exists() else pd.DataFrame()
    return RunResult(cfg, loaded, history, metrics, run_dir)


def read_metrics(run_dir) -> dict:
    """A finished run's metrics.json, checked: a JSON object with a number ``miou``; else one
    KitError naming the file, and what restores it (its checkpoint evaluated again)."""
    path = Path(run_dir) / METRICS
    fix = "delete it to have the run's checkpoint evaluated again (train --resume), or delete the folder"
    try:
        m = read_object(path, "a run's metrics (a JSON object with miou)")
    except KitError as e:
        raise KitError(f"{e}; {fix}") from None
    miou = m.get("miou")
    if isinstance(miou, bool) or not isinstance(miou, (int, float)):
        raise KitError(f"{path}: expected a run's metrics with a number miou, found miou={miou!r}; {fix}")
    return m


def stage_iterations(cfg: Config, n_stages: int = 4) -> list[int]:
    """Iterations to snapshot: the end of the supervised-only start (the nets the first pseudo labels
    come from), evenly spaced after it, and the last iteration; at most ``n_stages`` distinct values.
    Before that end the nets learn from labels alone, so one stage there shows all the pseudo labels
    of that phase would."""
    if n_stages < 1:
        raise KitError(f"n_stages: expected at least 1, got {n_stages}")
    first = min(max(cfg.sup_only_iters, 1), cfg.iterations)
    if n_stages == 1 or first == cfg.iterations:
        return [cfg.iterations]
    points = np.linspace(first, cfg.iterations, n_stages).round().astype(int)
    return sorted({int(p) for p in points})


def save_snapshot(run_dir, cfg: Config, iteration: int, nets) -> Path:
    """The nets' weights at ``iteration`` (no optimizer state) as ``run_dir/stages/iter_N.pt``."""
    return save_torch(Path(run_dir) / STAGES / f"iter_{int(iteration):06d}.pt",
                      checkpoint.weights_state(cfg, iteration, nets))


def load_snapshot(path, device="cpu"):
    """(iteration, nets in eval mode) from ``save_snapshot``."""
    state = checkpoint.load(path, weights=True)
    return int(state["iteration"]), checkpoint.state_nets(state, path, device)


def list_stages(run_dir) -> dict[int, Path]:
    """{iteration: snapshot path} of a run folder's stage snapshots, in iteration order."""
    folder = Path(run_dir) / STAGES
    found = {}
    for p in folder.glob("iter_*.pt") if folder.is_dir() else []:
        try:
            found[int(p.stem.split("_")[1])] = p
        except (IndexError, ValueError):
            continue
    return dict(sorted(found.items()))


def take_folder(held: ExitStack, info: DistInfo, run_dir, cfg: Config, wait: bool,
                 start: tuple[bool, bool] | None = None) -> Path | None:
    """Rank 0 prepares ``run_dir``, takes its lock (held until ``held`` closes), removes the temp
    files of writes a kill cut short, and checks that it holds this run or none; returns the folder
    there, None on the other ranks. ``start``: ``train``'s (resume, fresh), to apply its rule for a
    folder that already holds this run (``check_start``); None: the caller decides (``run_or_load``).
    Every rank learns whether that worked, so a refused folder stops all of them (none waits in DDP
    set-up for a rank 0 that raised). Only rank 0 locks: a rank waiting for rank 0's lock while
    rank 0 waits for it in a collective would hang both."""
    out, error = None, None
    if info.main:
        try:
            out = prepare(run_dir)
            held.enter_context(files.lock(out, wait=wait))
            check_same_run(out, cfg)
            # The lock is ours, so no live process writes the folder's files: any temp file of
            # theirs is left by a killed writer.
            remove_stale_temps(out)
            if start is not None:
                check_start(out, *start)
        except KitError as e:
            error = e
    if not all_ok(error is None):
        raise error or KitError(f"rank 0 could not use the run folder {run_dir} (its error says why)")
    return out


def check_start(out: Path, resume: bool, fresh: bool) -> None:
    """``train``'s rule for a folder that already holds this run: ``resume`` continues it; a
    checkpoint or metrics without ``resume`` is refused unless ``fresh``; a run that starts from
    iteration 0 first clears what an earlier attempt left (``start_over``)."""
    if resume:
        return
    found = state(out)
    if found != "new" and not fresh:
        what = ("a finished run of these settings (metrics.json)" if found == "finished" else
                "an interrupted run of these settings (a checkpoint, no metrics.json)")
        cont = "evaluate its checkpoint again" if found == "finished" else "continue it"
        raise KitError(f"{out} holds {what}; pass --resume to {cont}, --fresh to start it over (its "
                       f"checkpoint and metrics are removed first), or use another folder")
    start_over(out)
