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
    .lock                held by the process that trains here

**The same-run rule.** A folder is reused (loaded, resumed, skipped by a grid) only for the very
run it holds: every ``Config`` field equal, except the few in ``BOOKKEEPING``, which change how a
run is carried out or logged, never what it computes. Anything else is one clear ``KitError`` that
names the folder and the fields that differ; nothing is overwritten.

``.lock`` is held by the process that trains in the folder (``files.lock``); every file here is
written atomically (``files.write_atomic``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ADDED_FIELDS, PRESETS, Config, deviations, load_config_dict
from ..errors import KitError
from ..files import save_torch, write_json
from . import checkpoint

CONFIG, HISTORY, CHECKPOINT, METRICS = "config.json", "history.csv", "checkpoint.pt", "metrics.json"
VAL_CURVE = "val_curve.csv"
DIVERGED, STAGES = "diverged.json", "stages"

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
    """Create ``run_dir`` and check that it is writable (one clear error if not)."""
    out = Path(run_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise KitError(f"--out: cannot write to {out} ({e.strerror or e})") from None
    return out


def write_config(run_dir, cfg: Config) -> Path:
    """``config.json``: the settings and what of them departs from the paper recipe (``config.deviations``)."""
    return write_json(Path(run_dir) / CONFIG, {**cfg.to_dict(), "deviations_from_paper": deviations(cfg)})


def save_checkpoint(path, cfg: Config, iteration: int, nets, opts, scaler, history: list[dict],
                    val_curve: list[dict] | None = None) -> Path:
    """Both nets, optimizers, scaler, iteration, RNG states, history and validation curve, atomically."""
    return save_torch(path, checkpoint.make_state(cfg, iteration, nets, opts, scaler, history, val_curve))


# ------------------------------------------------------------------------------------------------
# the same-run rule


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def differing_settings(saved: dict, cfg: Config) -> list[str]:
    """Fields of ``cfg`` (outside ``BOOKKEEPING``) whose value differs from the saved config dict.
    A field the saved dict lacks (a folder from an older kit) counts as different, unless it is in
    ``ADDED_FIELDS``: then it counts as the value the older kit used."""
    now = cfg.to_dict()
    missing = object()
    return [k for k, v in now.items()
            if k not in BOOKKEEPING and _plain(saved.get(k, ADDED_FIELDS.get(k, missing))) != _plain(v)]


def check_same_run(run_dir, cfg: Config, saved: dict | None = None) -> None:
    """Raise a KitError naming the folder and the differing fields unless ``run_dir`` is empty or
    holds the run ``cfg`` describes. ``saved``: the folder's config (default: its config.json)."""
    run_dir = Path(run_dir)
    if saved is None:
        path = run_dir / CONFIG
        if not path.exists():
            return
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise KitError(f"{path}: unreadable; the folder's run is unknown, so it is not reused "
                           f"(delete the folder or use another)") from None
    diff = differing_settings(saved, cfg)
    if diff:
        now = cfg.to_dict()
        shown = "; ".join(f"{k}: folder {saved.get(k, '(not set)')!r}, now {_plain(now[k])!r}" for k in diff[:6])
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
             if k not in BOOKKEEPING and k not in named and _plain(v) != _plain(base[k])]
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
    if cfg is None:
        cfg = load_config_dict(json.loads((run_dir / CONFIG).read_text()))
    else:
        check_same_run(run_dir, cfg)
    loaded = []
    if nets:
        if not has_checkpoint(run_dir):
            raise KitError(f"{run_dir}: the run is finished but its {CHECKPOINT} was deleted (a grid with "
                           f"keep_checkpoints=False); its numbers are in {METRICS}")
        _, loaded = checkpoint.load_nets(run_dir / CHECKPOINT, device=device)
    history = pd.read_csv(run_dir / HISTORY) if (run_dir / HISTORY).exists() else pd.DataFrame()
    return RunResult(cfg, loaded, history, json.loads((run_dir / METRICS).read_text()), run_dir)


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
