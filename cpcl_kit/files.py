"""Files the kit writes, and folder locks.

Every file the kit writes goes through ``write_atomic``: a temp file in the same folder, fsynced,
renamed over the target, so a kill at any moment leaves the old file or the new one, never half.

**The lock.** A process that trains in a folder holds an exclusive ``flock`` on ``.lock`` (which
also records its pid, host and start time). A second process gets ``RunBusy`` at once, or waits
for the lock with ``wait=True``. The operating system releases the lock when its process ends in
any way, so a lock left by a killed process is simply taken over by the next runner.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

import pandas as pd
import torch

from .errors import KitError

try:  # POSIX; elsewhere runs are not locked (see lock())
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK = ".lock"  # the lock file in a locked folder


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


def shown_path(path) -> str:
    """``path`` as a message or a notebook shows it to a person. A reader of an executed notebook
    cannot use the absolute paths of the machine that ran it, so: relative to the working folder when
    under it; under a cache moved by ``$CPCL_KIT_CACHE`` as ``$CPCL_KIT_CACHE/...``; under the home
    folder as ``~/...``; else as given."""
    import os

    from .constants import CACHE_ENV, cache_root

    p = Path(path).expanduser().absolute()
    bases = [(Path.cwd(), None)] + ([(cache_root(), f"${CACHE_ENV}")] if os.environ.get(CACHE_ENV) else []) \
        + [(Path.home(), "~")]
    for base, shown in bases:
        try:
            rel = p.relative_to(base.expanduser().absolute())
        except ValueError:
            continue
        return str(rel) if shown is None else f"{shown}/{rel}"
    return str(path)


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


def read_class_names(path) -> list[str]:
    """Class names from a text file, one per line, a name's line number (from 0) being its id; blank
    lines at the end are ignored. KitError naming the file when it is missing, empty, has a blank
    line among the names, repeats a name, or names fewer than 2 classes or more than the ignore value
    leaves room for."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: class list not found (expected one class name per line; line 1 is class 0)")
    try:
        lines = path.read_text(encoding="utf-8").rstrip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: cannot read the class list ({e})") from None
    names = [line.strip() for line in lines]
    if not names or not names[0]:
        raise KitError(f"{path}: expected one class name per line, found none on line 1")
    if "" in names:
        raise KitError(f"{path}: line {names.index('') + 1} is blank (expected one class name per line)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise KitError(f"{path}: class names repeated: {', '.join(repeated)}")
    if len(names) < 2:
        raise KitError(f"{path}: 1 class ({names[0]}), expected at least 2 (e.g. a background and an object)")
    if len(names) > 255:  # ids are stored in 8-bit masks, and 255 means "no label"
        raise KitError(f"{path}: {len(names)} classes, expected at most 255")
    return names


def write_text(path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, data) -> Path:
    """``data`` as indented JSON (numpy and torch scalars as floats)."""
    return write_text(path, json.dumps(data, indent=2, default=float))


def write_csv(path, table: pd.DataFrame) -> Path:
    return write_text(path, table.to_csv(index=False))


def save_torch(path, obj) -> Path:
    return write_atomic(path, lambda f: torch.save(obj, f))


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
