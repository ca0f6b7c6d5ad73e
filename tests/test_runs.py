"""The run folder: the same-run rule for every config field, kit-chosen names, the lock, atomic writes."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from cpcl_kit import provenance

from cpcl_kit import files
from cpcl_kit.config import CHOICES, Config, load_config_dict, make_config
from cpcl_kit.engine import runs
from cpcl_kit.errors import KitError
from cpcl_kit.experiments import ablate

ROOT = Path(__file__).resolve().parents[1]
HINTS = typing.get_type_hints(Config)
FIELDS = [f.name for f in dataclasses.fields(Config)]


def other_value(name: str, value):
    """A different value of the field's type (a valid choice where the field has a list of them)."""
    if name in CHOICES:
        return next(c for c in CHOICES[name] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, tuple):
        return value + (value[-1],)
    if isinstance(value, str):
        return value + "x"
    assert value is None, (name, value)
    return 1 if int in typing.get_args(HINTS[name]) else "some/path"


def changed(cfg: Config, name: str) -> Config:
    return dataclasses.replace(cfg, **{name: other_value(name, getattr(cfg, name))})


@pytest.fixture
def folder(tmp_path):
    """A finished-looking run folder of the smoke preset's CPCL run."""
    base = make_config("smoke")
    runs.write_config(tmp_path, base)
    files.write_json(tmp_path / runs.METRICS, {"miou": 0.5})
    return base, tmp_path


def test_bookkeeping_fields_exist():
    assert set(runs.BOOKKEEPING) <= set(FIELDS)


@pytest.mark.parametrize("name", sorted(runs.ADDED_FIELDS))
def test_a_folder_from_before_a_field_existed_counts_as_its_old_value(name, folder):
    base, path = folder
    saved = {k: v for k, v in json.loads((path / runs.CONFIG).read_text()).items() if k != name}
    assert getattr(load_config_dict(saved), name) == runs.ADDED_FIELDS[name]  # it loads as it ran
    runs.check_same_run(path, dataclasses.replace(base, **{name: runs.ADDED_FIELDS[name]}), saved=saved)
    with pytest.raises(KitError, match=rf"holds a run with other settings \({name}: folder '\(not set\)'"):
        runs.check_same_run(path, changed(base, name), saved=saved)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_changed_alone_is_refused_or_separated(name, folder):
    base, path = folder
    other = changed(base, name)
    if name in runs.BOOKKEEPING:  # the same run: reused
        runs.check_same_run(path, other)
        return
    with pytest.raises(KitError, match=rf"{path} holds a run with other settings \({name}: folder"):
        runs.check_same_run(path, other)
    assert runs.run_dir_name(other) != runs.run_dir_name(base)  # kit-chosen folders never collide


def test_code_version_names_this_checkout():
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed_code = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "cpcl_kit"], cwd=ROOT,
                                  capture_output=True, text=True).stdout.strip()
    assert provenance.code_version() == {"commit": head, "dirty": bool(changed_code)}


def test_kit_chosen_names():
    assert runs.run_dir_name(make_config("demo")) == "cpcl_demo_1-16_seed0"
    assert runs.run_dir_name(make_config("demo", method="supervised", seed=2, labeled="1/8")) == \
        "supervised_demo_1-8_seed2"
    assert runs.run_dir_name(make_config("demo", unsup_weight=3)) == "cpcl_demo_1-16_seed0__unsup_weight-3"
    long = runs.run_dir_name(make_config("voc", data_root="/data/a very long path/VOCdevkit"))
    assert "__data_root-h" in long and " " not in long
    assert runs.grid_run_name("inter_only", "1/16", 2) == "inter_only__1-16__seed2"


def test_grid_refuses_a_folder_of_other_settings_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("cpcl_kit.engine.train.train", lambda *a, **k: pytest.fail("trained"))
    grid = ablate.normalise_grid({"variants": ["cpcl"], "seeds": [0]})
    cell = tmp_path / ablate.run_name("cpcl", "1/16", 0)
    runs.write_config(cell, ablate.run_config("cpcl", "1/16", 0, "smoke"))  # an interrupted λ=1 run
    with pytest.raises(KitError, match=r"other settings \(unsup_weight: folder 1.0, now 3.0\)"):
        ablate.run_grid(grid, tmp_path, preset="smoke", overrides={"unsup_weight": "3"}, log=None)
    from cpcl_kit.cli import main

    assert main(["ablate", "--grid", "variants=cpcl", "--out", str(tmp_path), "--set", "unsup_weight=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unsup_weight: folder 1.0, now 3.0" in err and str(cell) in err


def test_cli_train_refuses_a_folder_of_other_settings(tmp_path, capsys):
    from cpcl_kit.cli import main

    runs.write_config(tmp_path, make_config("smoke", method="supervised"))
    assert main(["train", "--method", "supervised", "--out", str(tmp_path), "--set", "crop=48", "--quiet"]) == 2
    assert "crop: folder 64, now 48" in capsys.readouterr().err


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = files.write_json(tmp_path / "m.json", {"a": 1})

    def dies(f):
        f.write(b'{"half')
        raise OSError(28, "No space left on device")

    with pytest.raises(KitError, match=r"m\.json: cannot write \(No space left on device\); the previous file is kept"):
        files.write_atomic(path, dies)
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["m.json"]
    mask = os.umask(0o022)
    try:
        assert files.write_text(tmp_path / "t.txt", "x").stat().st_mode & 0o777 == 0o644  # as open() would
    finally:
        os.umask(mask)


# ------------------------------------------------------------------------------------------------
# the lock

HOLD = textwrap.dedent("""
    import sys, time
    from cpcl_kit import files
    with files.lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")
TRY = textwrap.dedent("""
    import sys
    from cpcl_kit import files
    try:
        with files.lock(sys.argv[1]):
            print("got it")
    except files.RunBusy as e:
        print("busy:", e)
""")


def _python(code: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True, env=env)


def test_lock_is_exclusive_reentrant_and_taken_over_from_a_killed_holder(tmp_path):
    holder = _python(HOLD, tmp_path)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = subprocess.run([sys.executable, "-c", TRY, str(tmp_path)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
        assert out.startswith("busy:") and f"pid {holder.pid}" in out and "is training there" in out
        with pytest.raises(files.RunBusy):
            with files.lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with files.lock(tmp_path) as mine:  # the dead process's lock is simply taken over
        assert mine.stale["pid"] == holder.pid
        with files.lock(tmp_path):  # reentrant in one process
            assert f"pid {os.getpid()}" in files.holder(tmp_path)
    with files.lock(tmp_path) as again:
        assert again.stale is None  # a released lock leaves no record


def test_two_grids_on_one_folder_train_each_run_once(tmp_path):
    """Two `ablate` processes started at once on one --out: every run is trained by exactly one of
    them, the other skips it or waits for it, and the table holds each run once."""
    cmd = [sys.executable, "-m", "cpcl_kit", "ablate", "--grid", "variants=cpcl,cps,supervised", "seeds=0",
           "--preset", "smoke", "--out", str(tmp_path), "--quiet",
           "--set", "iterations=4", "--set", "n_train_scenes=32", "--set", "n_val_scenes=4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    log = "\n".join(o for o, _ in outs)
    for variant in ("cpcl", "cps", "supervised"):
        trained = [line for line in log.splitlines() if f"] {variant} 1/16 seed 0: trained" in line]
        assert len(trained) == 1, log
    table = ablate.collect(tmp_path)
    assert sorted(table["run"]) == sorted(ablate.run_name(v, "1/16", 0) for v in ("cpcl", "cps", "supervised"))
