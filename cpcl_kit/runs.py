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

**The lock.** A process that trains in a folder holds an exclusive ``flock`` on ``.lock`` (which
also records its pid, host and start time). A second process gets ``RunBusy`` at once, or waits
for the lock with ``wait=True``. The operating system releases the lock when its process ends in
any way, so a lock left by a killed process is simply taken over by the next runner.

Every file the kit writes goes through ``write_atomic``: a temp file in the same folder, fsynced,
renamed over the target, so a kill at any moment leaves the old file or the new one, never half.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import pandas as pd
import torch

from . import checkpoint
from .config import ADDED_FIELDS, PRESETS, Config, deviations, load_config_dict
from .errors import KitError
from .model import build_nets
from .provenance import code_version  # noqa: F401  (runs.code_version: what metrics.json records)

try:  # POSIX; elsewhere runs are not locked (see lock())
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

CONFIG, HISTORY, CHECKPOINT, METRICS = "config.json", "history.csv", "checkpoint.pt", "metrics.json"
VAL_CURVE = "val_curve.csv"
DIVERGED, LOCK, STAGES = "diverged.json", ".lock", "stages"

# Config fields that do not make a different run, and why. Every other field does.
BOOKKEEPING = {
    "device": "where it runs; the same settings on CPU or GPU are the same experiment",
    "num_workers": "loader processes; a batch depends on (seed, iteration) only",
    "log_every": "how often a history row is written",
    "checkpoint_every": "how often the checkpoint is written; resume is exact from any of them",
    "cudnn_benchmark": "cuDNN's choice of kernel; the same arithmetic",
    "preset": "the name the settings started from; the settings themselves are compared",
    # Watching a run: evaluation and TensorBoard run in eval mode without drawing from the training
    # RNGs, so the weights are bit for bit those of the same run without them (tests/test_watch.py).
    # A finished run asked for again with other values is loaded as it is; a resumed one goes on
    # with the new values from where it stopped.
    "eval_every": "how often the validation set is evaluated during training",
    "tensorboard": "whether TensorBoard event files are written",
    "tb_image_every": "how often TensorBoard gets an image of the pseudo labels",
}

def machine() -> str:
    """The CPU a result was measured on, in one line: model, the vector extensions that change
    float results (AVX2, AVX-512, AMX), and the core count."""
    import os
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(ext) or 'no AVX2'}; {os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------------------
# writing


def write_atomic(path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it and rename it over ``path``.

    A kill or an error at any moment leaves the previous file (or none) and no debris; the
    folder is fsynced too, so the rename itself survives a power cut. A failed write (a full disk,
    a read-only folder) is one ``KitError`` naming ``path`` and the cause, also where the writer
    reports it as an error of its own (``torch.save``: "enforce fail at inline_container.cc")."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp")
        with os.fdopen(fd, "wb") as raw:
            f = _Recording(raw)
            try:
                write(f)
            except Exception:
                if f.error is None:  # not a write error: the writer's own failure, as it is
                    raise
                raise f.error from None
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = "the previous file is kept" if path.exists() else "no file was written"
            raise KitError(f"{path}: cannot write ({e.strerror or e}); {kept}") from None
        raise
    _fsync_dir(path.parent)
    return path


class _Recording:
    """A binary file that remembers the first OSError of its writes: ``torch.save`` and others turn
    that error into one of their own, and the OSError (e.g. ENOSPC) says what happened."""

    def __init__(self, f: BinaryIO):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, data) -> Path:
    """``data`` as indented JSON (numpy and torch scalars as floats)."""
    return write_text(path, json.dumps(data, indent=2, default=float))


def write_csv(path, table: pd.DataFrame) -> Path:
    return write_text(path, table.to_csv(index=False))


def save_torch(path, obj) -> Path:
    return write_atomic(path, lambda f: torch.save(obj, f))


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
# the lock


class RunBusy(KitError):
    """Another process holds the run folder's lock."""


_HELD: dict[Path, list] = {}  # folders this process has locked: [fd, depth] (the lock is reentrant)


class lock:
    """``with lock(run_dir):`` — hold the folder's exclusive lock while training there.

    ``wait=False`` raises ``RunBusy`` (naming the holder) when another process holds it;
    ``wait=True`` blocks until it is free. Reentrant within a process. ``.stale`` is the record of
    a previous holder that ended without releasing (killed), when this lock took it over."""

    def __init__(self, run_dir, wait: bool = False):
        self.path = Path(run_dir).resolve() / LOCK
        self.wait, self.stale = wait, None

    def __enter__(self) -> "lock":
        key = self.path.parent
        if key in _HELD:
            _HELD[key][1] += 1
            return self
        if fcntl is None:  # pragma: no cover - no flock on this platform: unlocked
            _HELD[key] = [None, 1]
            return self
        try:
            key.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise KitError(f"{self.path}: cannot create the folder's lock file ({e.strerror or e}); "
                           f"expected a folder this user may write to") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.wait:
                    raise RunBusy(f"{key} is in use: {holder(key) or 'another process'} is training there; "
                                  f"wait for it to finish or use another folder") from None
                fcntl.flock(fd, fcntl.LOCK_EX)
            # A released lock is emptied (see __exit__): a record left in it means its process died.
            self.stale = _read_record(fd) or None
            record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        _HELD[key] = [fd, 1]
        return self

    def __exit__(self, *exc) -> None:
        key = self.path.parent
        _HELD[key][1] -= 1
        if _HELD[key][1]:
            return
        fd = _HELD.pop(key)[0]
        if fd is not None:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_record(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def holder(run_dir) -> str | None:
    """"pid 123 on host since 2026-12-01 21:40:00" for the process that holds (or last held) the lock."""
    path = Path(run_dir) / LOCK
    try:
        r = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return None
    return f"pid {r['pid']} on {r['host']} since {r['since']}" if {"pid", "host", "since"} <= set(r) else None


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
    """Iterations to snapshot: an early one (a quarter of the supervised-only start, when the nets
    still label poorly: the classroom's "before"), the end of the supervised-only start (when the
    pseudo labels switch on), evenly spaced after it, and the last iteration. At most ``n_stages``
    distinct values; a run without a supervised-only start gets no early stage."""
    if n_stages < 1:
        raise KitError(f"n_stages: expected at least 1, got {n_stages}")
    first = min(max(cfg.sup_only_iters, 1), cfg.iterations)
    if n_stages == 1 or first == cfg.iterations:
        return [cfg.iterations]
    early = [first // 4] if n_stages > 2 and first // 4 >= 1 else []
    points = np.linspace(first, cfg.iterations, n_stages - len(early)).round().astype(int)
    return sorted(set(early + [int(p) for p in points]))


def save_snapshot(run_dir, cfg: Config, iteration: int, nets) -> Path:
    """The nets' weights at ``iteration`` (no optimizer state) as ``run_dir/stages/iter_N.pt``."""
    state = {"config": cfg.to_dict(), "iteration": int(iteration),
             "nets": [{k: v.detach().cpu() for k, v in n.state_dict().items()} for n in nets]}
    return save_torch(Path(run_dir) / STAGES / f"iter_{int(iteration):06d}.pt", state)


def load_snapshot(path, device="cpu"):
    """(iteration, nets in eval mode) from ``save_snapshot``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = load_config_dict(state["config"])
    except (OSError, RuntimeError, KeyError, EOFError) as e:
        raise KitError(f"stage snapshot {path}: unreadable ({type(e).__name__}: {e})") from None
    nets = build_nets(dataclasses.replace(cfg, backbone_weights=None))  # the weights come from the file
    for net, sd in zip(nets, state["nets"]):
        net.load_state_dict(sd)
        net.to(device).eval()
    return int(state["iteration"]), nets


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
