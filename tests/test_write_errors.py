"""A write that fails (a full disk, a folder the user may not write) is one line naming the file,
and leaves the previous file or none: never a half-written one, never temp debris.

The failure is made by the file the kit writes through (``os.fdopen`` in ``files.write_atomic``):
its writes raise ENOSPC past a number of bytes, as a disk that fills up does. chmod would not do
it where the tests run as root.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from cpcl_kit import cli, files
from cpcl_kit.errors import KitError


class _FillingDisk:
    """A file whose writes fail with ENOSPC once more than ``room`` bytes were written to it."""

    def __init__(self, f, room: int):
        self._f, self._left = f, room

    def write(self, data) -> int:
        self._left -= len(data)
        if self._left < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def disk_fills_after(monkeypatch):
    def fill(room: int) -> None:
        real = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FillingDisk(real(fd, *a, **k), room))
    return fill


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", ["checkpoint", "json", "csv"])
def test_full_disk_keeps_the_previous_file_and_names_the_path(kind, tmp_path, disk_fills_after):
    import pandas as pd

    path = tmp_path / {"checkpoint": "checkpoint.pt", "json": "metrics.json", "csv": "history.csv"}[kind]
    write = {"checkpoint": lambda n: files.save_torch(path, {"w": torch.arange(n, dtype=torch.float32)}),
             "json": lambda n: files.write_json(path, {"miou": list(range(n))}),
             "csv": lambda n: files.write_csv(path, pd.DataFrame({"loss": range(n)}))}[kind]
    write(10)
    before = path.read_bytes()
    disk_fills_after(4096)
    with pytest.raises(KitError) as e:
        write(100_000)
    msg = str(e.value)
    assert msg.startswith(f"{path}: cannot write (No space left on device)") and "\n" not in msg, msg
    assert "previous file is kept" in msg and "inline_container" not in msg
    assert path.read_bytes() == before and _files(tmp_path) == [path.name]  # no half file, no temp file


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    def refused(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.tempfile, "mkstemp", refused)
    with pytest.raises(KitError, match=rf"^{tmp_path / 'config.json'}: cannot write \(Permission denied\); "
                                       r"no file was written$"):
        files.write_json(tmp_path / "config.json", {})
    assert _files(tmp_path) == []


def test_not_a_write_error_stays_what_it_is(tmp_path):
    """A writer that fails for its own reasons (a bug, an object it cannot store) is not a disk error."""
    with pytest.raises(TypeError):
        files.write_atomic(tmp_path / "x.json", lambda f: f.write(object()))
    assert _files(tmp_path) == []


def test_train_on_a_full_disk_ends_in_one_line_naming_the_checkpoint(tmp_path, disk_fills_after, capsys):
    out = tmp_path / "run"
    disk_fills_after(1 << 16)  # config.json and history.csv fit; a checkpoint does not
    rc = cli.main(["train", "--preset", "smoke", "--method", "supervised", "--quiet", "--out", str(out),
                   "--set", "iterations=2", "--set", "checkpoint_every=2", "--set", "log_every=1",
                   "--set", "n_train_scenes=16", "--set", "n_val_scenes=4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {out / 'checkpoint.pt'}: cannot write (No space left on device); " \
                              f"no file was written", err
    assert "checkpoint.pt" not in _files(out) and "metrics.json" not in _files(out)
    assert not [n for n in _files(out) if ".tmp" in n]
    assert json.loads((out / "config.json").read_text())["iterations"] == 2
