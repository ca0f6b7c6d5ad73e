"""Files the kit writes, and folder locks.

Every file the kit writes goes through ``write_atomic``: a temp file in the same folder, fsynced,
renamed over the target, so a kill at any moment leaves the old file or the new one, never half.

**The lock.** A process that trains in a folder holds an exclusive ``flock`` on ``.lock`` (which
also records its pid, host and start time). A second process gets ``RunBusy`` at once, or waits
for the lock with ``wait=True``. The operating system releases the lock when its process ends in
any way, so a lock left by a killed process is simply taken over by the next runner.

**No file written through a planted link.** The kit opens the one file it writes in place (the
lock) with ``O_NOFOLLOW`` and refuses anything there that is not a plain file of
its own (a symbolic link, a hard link to another file, a device): opened as they are, they would
make the kit truncate whatever they point to. Every other file is written to a new temp file
(created exclusively) and renamed over its name, which replaces a link there instead of writing
through it.

**Temp files.** A kill between creating a temp file and renaming it leaves the temp file
(``.<name>.tmp`` and 8 random characters; checkpoint-sized for a checkpoint). The holder of a
folder's lock is the only writer of that folder's run files, so it removes those left over
(``remove_stale_temps``) when it starts.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
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
PROBE = ".write-test"  # the name of the file that tells whether a folder may be written (probe_writable)
# What write_atomic adds to a file's name for its temp file: ".<name>.tmp" before mkstemp's 8
# random characters (letters, digits, "_"); remove_stale_temps matches exactly this.
TEMP_MARK = ".tmp"
_TEMP_RANDOM = r"[a-z0-9_]{8}"
# open() flags that refuse to follow a symbolic link at the last component (0 where the platform
# has none).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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
    from .constants import CACHE_ENV, cache_root

    p = Path(path).expanduser().absolute()
    bases = [(Path.cwd(), None)] + ([(cache_root(), f"${CACHE_ENV}")] if os.environ.get(CACHE_ENV) else [])
    try:
        bases.append((Path.home(), "~"))
    except RuntimeError:  # no home folder (HOME unset, no passwd entry): nothing to shorten
        pass
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
        # mkstemp creates the file exclusively (O_CREAT | O_EXCL | O_NOFOLLOW): nothing planted
        # under the temp name is written through.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}")
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
    fsync_folder(path.parent)
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


def fsync_folder(folder: Path) -> None:
    """Make the renames and removals in ``folder`` durable (they survive a power cut)."""
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


def temp_name_pattern(names: str) -> re.Pattern:
    """The names of ``write_atomic``'s temp files for the files whose names match the regular
    expression ``names`` (e.g. ``checkpoint\\.pt|metrics\\.json``)."""
    return re.compile(rf"\.(?:{names}){re.escape(TEMP_MARK)}{_TEMP_RANDOM}")


def remove_stale_temps(folder, names: str) -> list[Path]:
    """Remove the temp files that ``write_atomic`` left in ``folder`` for the files matching the
    regular expression ``names`` (a kill between creating one and renaming it); returns them.

    Only under the lock (``lock``) of the folder or of a folder above it, held by this process, and
    only for files that the lock holder alone writes: then no live process is writing any of these
    temp files. Only plain files whose whole name matches are removed, never a link or a folder."""
    folder = Path(folder)
    where = folder.resolve()
    if not any(p in _HELD for p in (where, *where.parents)):
        raise RuntimeError(f"remove_stale_temps({folder}): only the holder of the folder's lock may remove "
                           f"its temp files")
    pattern, removed = temp_name_pattern(names), []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet, or not readable: nothing of ours to remove
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except OSError:  # gone already, or not ours to remove: left as it is
                continue
            removed.append(Path(entry.path))
    if removed:
        fsync_folder(folder)
    return removed


def probe_writable(folder) -> Path:
    """Create ``folder`` (and its parents) and check that this user may write files in it: an empty
    temp file ``.write-test.tmp`` + 8 random characters, created exclusively (so that two processes
    probing one folder at once never meet) and removed. Anything planted as ``PROBE`` that is not a
    plain file (a link, say) is refused with a KitError naming it; OSError is left to the caller's
    words."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _refuse_planted(folder / PROBE, os.lstat(folder / PROBE), "the folder's write probe")
    except FileNotFoundError:
        pass
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{PROBE}{TEMP_MARK}")
    os.close(fd)
    # missing_ok: a lock holder may have taken it for a stale temp file (runs.remove_stale_temps)
    Path(name).unlink(missing_ok=True)
    return folder


def _refuse_planted(path: Path, st: os.stat_result, what: str) -> None:
    """KitError unless ``st`` (of ``path``, not followed) is a plain file with no other name."""
    if stat.S_ISLNK(st.st_mode):
        found = f"a symbolic link to {os.readlink(path)}"
    elif not stat.S_ISREG(st.st_mode):
        found = "not a plain file"
    elif st.st_nlink > 1:
        found = f"a plain file with {st.st_nlink - 1} other name(s) (a hard link)"
    else:
        return
    raise KitError(f"{path}: {what} is {found}; refused: the kit writes no file through a link or into a "
                   f"file it did not make (remove it)")


def read_class_names(path) -> list[str]:
    """Class names from a text file, one per line, a name's line number (from 0) being its id; blank
    lines at the end are ignored. KitError naming the file when it is missing, empty, has a blank
    line among the names, repeats a name, or names fewer than 2 classes or more than the ignore value
    leaves room for."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: class list not found (expected one class name per line; line 1 is class 0)")
    try:
        # utf-8-sig: a byte-order mark some editors write is no part of the first class's name
        lines = path.read_text(encoding="utf-8-sig").rstrip().splitlines()
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
            # O_NOFOLLOW: a link planted as the lock file is refused (ELOOP), never truncated
            # through; O_NONBLOCK: a planted FIFO does not hang the open.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as e:
            if os.path.islink(self.path):
                _refuse_planted(self.path, os.lstat(self.path), "the folder's lock file")
            raise KitError(f"{self.path}: cannot create the folder's lock file ({e.strerror or e}); "
                           f"expected a folder this user may write to") from None
        try:
            _refuse_planted(self.path, os.fstat(fd), "the folder's lock file")  # before any write to it
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
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def holder(run_dir) -> str | None:
    """"pid 123 on host since 2026-12-01 21:40:00" for the process that holds (or last held) the lock."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))  # a planted link: not read
    except OSError:
        return None
    try:
        r = _read_record(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else {}
    finally:
        os.close(fd)
    return f"pid {r['pid']} on {r['host']} since {r['since']}" if {"pid", "host", "since"} <= set(r) else None
