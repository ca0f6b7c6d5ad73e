"""Hostile or damaged files, and numbers past what the machine holds, through the CLI.

One row per hostile situation (``ROWS``): a link planted where the kit writes (pointing at a victim
file), a checkpoint whose weights hold NaN or inf, a folder that already holds the run, temp files
a killed writer left, JSON files of the wrong shape, a cache or home folder that cannot be used.
Each row builds its situation in a fresh ``tmp_path``, runs ``python -m cpcl_kit`` in this process
(``cli.main``) and checks:

* the exit code, and for an error the one stderr line (warnings aside) and what it says;
* that nothing outside the folder the row may change (``changes``) changed: every file, link and
  folder under ``tmp_path`` (the victim files are there) has the same kind, content and target;
* the row's own checks of that folder (``then``).

Out-of-bound settings of every Config field are the table in tests/test_config_fields.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from cpcl_kit import cli, config, files, limits
from cpcl_kit.engine import runs
from cpcl_kit.errors import KitError

REPO = Path(__file__).resolve().parents[1]
# The smoke preset at its smallest: one net, two iterations (a run takes a few seconds).
SMALL = ["--preset", "smoke", "--method", "supervised", "--quiet", "--set", "iterations=2",
         "--set", "checkpoint_every=2", "--set", "log_every=1", "--set", "n_train_scenes=16",
         "--set", "n_val_scenes=4", "--set", "head_channels=8"]
TRAIN = ["train", *SMALL]
SETS = SMALL[SMALL.index("--set"):]  # the same settings for a grid (its variant names the method)
VICTIM_TEXT = "a file the kit must never write\n"
# A temp file name of files.write_atomic: "." + the target's name + ".tmp" + mkstemp's 8 characters.
STALE = [".checkpoint.pt.tmpab12cd34", ".metrics.json.tmpzz99zz99", ".history.csv.tmp_k3j9x0q"]
# Names that look alike but are not the lock holder's temp files: kept.
NOT_STALE = [".eval_metrics.json.tmpabcdefgh",  # written by `evaluate`, which takes no lock
             "notes.tmp12345678", ".checkpoint.pt.tmp-not-8", ".config.json.tmpABCDEFGH"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished smoke run (supervised, two iterations): config, history, checkpoint, metrics."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert cli.main([*TRAIN, "--out", str(out)]) == 0
    return out


@dataclass
class World:
    """What a row's set-up builds in: the test's folder and the finished run to copy from."""

    tmp: Path
    finished: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def victim(self) -> Path:
        return self.tmp / "victim" / "precious.txt"

    def run(self, name: str = "run", metrics: bool = True) -> Path:
        """A copy of the finished run (without metrics.json: an interrupted one)."""
        dst = self.tmp / name
        shutil.copytree(self.finished, dst, symlinks=True)
        if not metrics:
            (dst / runs.METRICS).unlink()
        return dst

    def keep(self) -> None:
        """A copy of tmp/run as it is now, tmp/before, to compare with after the row."""
        shutil.copytree(self.tmp / "run", self.tmp / "before", symlinks=True)

    def plant(self, link: Path, target: Path | None = None) -> Path:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target or self.victim)
        return link

    def edit_checkpoint(self, folder: Path, edit: Callable[[dict], None]) -> None:
        state = torch.load(folder / runs.CHECKPOINT, map_location="cpu", weights_only=True)
        edit(state)
        torch.save(state, folder / runs.CHECKPOINT)

    def image(self) -> Path:
        path = self.tmp / "photos" / "a.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(path)
        return path

    def no_home(self) -> None:
        """HOME unset and no passwd entry for this user: Path.home() cannot answer."""
        import pwd

        for name in ("HOME", "CPCL_KIT_CACHE", "XDG_CACHE_HOME", "CPCL_KIT_PREPARED"):
            self.monkeypatch.delenv(name, raising=False)

        def no_entry(*a):
            raise KeyError("no passwd entry")

        self.monkeypatch.setattr(pwd, "getpwuid", no_entry)


@dataclass
class Row:
    argv: list[str]        # {tmp}: the test's folder, {victim}: the victim file
    setup: Callable[[World], None] = lambda w: None
    rc: int = 2
    message: str | None = None  # a regex the one error line must match (rc 0: no error line)
    changes: str | None = "run"  # the one folder under tmp that may change (None: nothing may)
    then: Callable[[Path], None] = lambda tmp: None  # checks of what changed
    held: bool = False  # another process holds tmp/run's lock while the row runs
    known: str | None = None  # a defect outside this test's files: xfail(strict) until fixed


def _unfinished(tmp: Path, name: str = "run") -> None:
    assert not (tmp / name / runs.METRICS).exists() and not (tmp / name / runs.CHECKPOINT).exists()


def _same_checkpoint_and_metrics(source: str):
    def check(tmp: Path) -> None:
        for name in (runs.CHECKPOINT, runs.METRICS):
            a, b = tmp / "run" / name, tmp / source / name
            assert a.exists() == b.exists() and (not a.exists() or a.read_bytes() == b.read_bytes()), name
    return check


def _nan_weight(state: dict) -> None:
    key = next(k for k, v in state["nets"][0].items() if v.is_floating_point())
    state["nets"][0][key].view(-1)[3] = float("nan")


def _inf_running_var(state: dict) -> None:
    key = next(k for k in state["nets"][0] if k.endswith("running_var"))
    state["nets"][0][key][0] = float("inf")


def _inf_optimizer_state(state: dict) -> None:
    moments = next(iter(state["optimizers"][0]["state"].values()))
    moments["exp_avg_sq"].view(-1)[0] = float("inf")


def _stale_temps(w: World) -> None:
    run = w.run()
    for name in STALE + NOT_STALE:
        (run / name).write_bytes(os.urandom(4096))
    (run / runs.STAGES).mkdir()
    (run / runs.STAGES / ".iter_000002.pt.tmpq1w2e3r4").write_bytes(os.urandom(4096))
    w.plant(run / ".config.json.tmpzxcvbnm1")  # a link with a temp name is not ours: left alone


def _stale_temps_gone(tmp: Path) -> None:
    run = tmp / "run"
    left = {p.name for p in run.iterdir()} | {p.name for p in (run / runs.STAGES).iterdir()}
    assert not left & set(STALE + [".iter_000002.pt.tmpq1w2e3r4"]), left
    assert set(NOT_STALE + [".config.json.tmpzxcvbnm1"]) <= left, left
    assert runs.is_finished(run)


def _stale_temps_kept(tmp: Path) -> None:
    run = tmp / "run"
    assert set(STALE + NOT_STALE) <= {p.name for p in run.iterdir()}
    assert (run / runs.STAGES / ".iter_000002.pt.tmpq1w2e3r4").exists()


@pytest.fixture
def holder(tmp_path):
    """Another process that holds tmp/run's lock while the row runs."""
    procs = []

    def start() -> None:
        code = "import sys, time; from cpcl_kit import files\nwith files.lock(sys.argv[1]):\n" \
               "    print('locked', flush=True); time.sleep(120)"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                             env=env)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _killed_at_first_save(w: World) -> None:
    """A finished run trained again with --fresh, killed (Ctrl-C) as its first checkpoint is written."""
    w.run()
    (w.tmp / "run" / runs.EVAL_METRICS).write_text('{"miou": 0.5}')

    def killed(*a, **k):
        raise KeyboardInterrupt

    w.monkeypatch.setattr(runs, "save_checkpoint", killed)


def _not_finished_after_kill(tmp: Path) -> None:
    run = tmp / "run"
    # the old metrics and evaluation went first: the folder is no longer "finished" by old numbers
    assert not runs.is_finished(run) and not (run / runs.EVAL_METRICS).exists()
    assert not runs.has_checkpoint(run)  # and no new weights were written beside anything old


def _fresh_again(tmp: Path) -> None:
    run = tmp / "run"
    assert runs.is_finished(run) and not (run / runs.EVAL_METRICS).exists()
    assert runs.read_metrics(run)["iterations"] == 2


def _unwritable_cache(w: World) -> None:
    (w.tmp / "a-file").write_text("a regular file, not a folder\n")
    for name in ("CPCL_KIT_CACHE", "XDG_CACHE_HOME"):
        w.monkeypatch.delenv(name, raising=False)
    w.monkeypatch.setenv("HOME", str(w.tmp / "a-file" / "home"))


def _out_of_memory(w: World) -> None:
    w.image()

    def allocation_fails(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 479769627648 bytes. Error code 12 (Cannot allocate memory)")

    w.monkeypatch.setattr("cpcl_kit.engine.evaluate.predict_logits", allocation_fails)


LINK = r"is a symbolic link to .*victim/precious\.txt; refused: the kit writes no file through a link"
# Files the kit replaces by renaming a new file over them: a link there is replaced, not written through.
RUN_FILES = (runs.METRICS, runs.CHECKPOINT, runs.HISTORY)
CELL = "supervised__1-16__seed0"  # ablate.run_name("supervised", "1/16", 0)
PREDICT = ["predict", "--checkpoint", "{tmp}/run", "{tmp}/photos", "--out", "{tmp}/pred", "--quiet"]

ROWS: dict[str, Row] = {
    # -------------------------------------------------------------- links planted where the kit writes
    "train: .lock is a link to a victim": Row(
        [*TRAIN, "--out", "{tmp}/run"], lambda w: w.plant(w.tmp / "run" / files.LOCK),
        message=r"run/\.lock: the folder's lock file " + LINK, then=_unfinished),
    "train: .lock is a dangling link": Row(
        [*TRAIN, "--out", "{tmp}/run"], lambda w: w.plant(w.tmp / "run" / files.LOCK, w.tmp / "victim" / "new"),
        message=r"run/\.lock: the folder's lock file is a symbolic link to .*victim/new; refused", then=_unfinished),
    "train: .lock is a hard link to a victim": Row(
        [*TRAIN, "--out", "{tmp}/run"],
        lambda w: ((w.tmp / "run").mkdir(), os.link(w.victim, w.tmp / "run" / files.LOCK)),
        message=r"run/\.lock: the folder's lock file is a plain file with 1 other name\(s\) \(a hard link\); refused",
        then=_unfinished),
    "train: .write-test is a link to a victim": Row(
        [*TRAIN, "--out", "{tmp}/run"], lambda w: w.plant(w.tmp / "run" / files.PROBE),
        message=r"run/\.write-test: the folder's write probe " + LINK, then=_unfinished),
    "train: stages/ is a link to a victim folder": Row(
        [*TRAIN, "--out", "{tmp}/run"],
        lambda w: ((w.tmp / "victim" / ".iter_000002.pt.tmpq1w2e3r4").write_text("not the kit's"),
                   w.plant(w.tmp / "run" / runs.STAGES, w.tmp / "victim")),
        message=r"run/stages: the folder's stage snapshots are a symbolic link to .*victim; refused",
        then=_unfinished),
    "train --fresh: the run's files are links to a victim": Row(
        [*TRAIN, "--fresh", "--out", "{tmp}/run"],
        lambda w: (w.run(), [(w.tmp / "run" / n).unlink() for n in RUN_FILES],
                   [w.plant(w.tmp / "run" / n) for n in RUN_FILES]),
        rc=0, then=_fresh_again),
    "train --resume: .lock is a link to a victim": Row(
        [*TRAIN, "--resume", "--out", "{tmp}/run"],
        lambda w: (w.run(metrics=False), (w.tmp / "run" / files.LOCK).unlink(), w.plant(w.tmp / "run" / files.LOCK)),
        message=r"run/\.lock: the folder's lock file " + LINK),
    "ablate: a cell's .lock is a link to a victim": Row(
        ["ablate", "--grid", "variants=supervised", "fractions=1/16", "seeds=0", "--out", "{tmp}/grid", "--quiet",
         *SETS], lambda w: w.plant(w.tmp / "grid" / CELL / files.LOCK),
        message=rf"grid/{CELL}/\.lock: the folder's lock file " + LINK, changes="grid",
        then=lambda tmp: _unfinished(tmp, f"grid/{CELL}")),
    "ablate: a cell's .write-test is a link to a victim": Row(
        ["ablate", "--grid", "variants=supervised", "fractions=1/16", "seeds=0", "--out", "{tmp}/grid", "--quiet",
         *SETS], lambda w: w.plant(w.tmp / "grid" / CELL / files.PROBE),
        message=rf"grid/{CELL}/\.write-test: the folder's write probe " + LINK, changes="grid",
        then=lambda tmp: _unfinished(tmp, f"grid/{CELL}")),
    "prepare: the set's .write-test is a link to a victim": Row(
        ["prepare", "--preset", "smoke", "--jobs", "1", "--out", "{tmp}/set", "--quiet"],
        lambda w: w.plant(w.tmp / "set" / files.PROBE), message=r"set/\.write-test: the folder's write probe " + LINK,
        changes="set"),
    "prepare: every member's .lock is a link to a victim": Row(
        ["prepare", "--preset", "smoke", "--jobs", "1", "--out", "{tmp}/set", "--quiet"],
        lambda w: [w.plant(d / files.LOCK) for d in _members(w.tmp / "set")],
        message=r"set/\w+__[\w-]+__seed0/\.lock: the folder's lock file " + LINK, changes="set"),
    "pretrain: the cache's .lock is a link to a victim": Row(
        ["pretrain", "--preset", "smoke", "--set", "pretrain_steps=1", "--cache", "{tmp}/cache", "--quiet"],
        lambda w: w.plant(w.tmp / "cache" / files.LOCK), message=r"cache/\.lock: the folder's lock file " + LINK,
        changes="cache"),
    # ------------------------------------------------------------------- non-finite weights
    "predict: a NaN weight": Row(
        PREDICT, lambda w: (w.run(), w.edit_checkpoint(w.tmp / "run", _nan_weight), w.image()),
        message=r"checkpoint: .*run/checkpoint\.pt holds non-finite weights \(NaN or inf in net 1's \S+\); refused",
        changes=None),
    "evaluate: a NaN weight": Row(
        ["evaluate", "--checkpoint", "{tmp}/run/checkpoint.pt", "--quiet"],
        lambda w: (w.run(), w.edit_checkpoint(w.tmp / "run", _nan_weight)),
        message=r"checkpoint: .*run/checkpoint\.pt holds non-finite weights \(NaN or inf in net 1's", changes=None),
    "evaluate: an infinite BatchNorm variance": Row(
        ["evaluate", "--checkpoint", "{tmp}/run/checkpoint.pt", "--quiet"],
        lambda w: (w.run(), w.edit_checkpoint(w.tmp / "run", _inf_running_var)),
        message=r"holds non-finite weights \(NaN or inf in net 1's \S+running_var\)", changes=None),
    "train --resume: a NaN weight": Row(
        [*TRAIN, "--resume", "--out", "{tmp}/run"],
        lambda w: (w.run(metrics=False), w.edit_checkpoint(w.tmp / "run", _nan_weight), w.keep()),
        message=r"checkpoint: .*run/checkpoint\.pt holds non-finite weights",
        then=_same_checkpoint_and_metrics("before")),
    "train --resume: an infinite Adam moment": Row(
        [*TRAIN, "--resume", "--out", "{tmp}/run"],
        lambda w: (w.run(metrics=False), w.edit_checkpoint(w.tmp / "run", _inf_optimizer_state), w.keep()),
        message=r"checkpoint: .*run/checkpoint\.pt holds a non-finite optimizer state \(NaN or inf in optimizer 1\)",
        then=_same_checkpoint_and_metrics("before")),
    # ----------------------------------------------------- a folder's metrics belong to its weights
    "train without --resume: the folder holds the finished run": Row(
        [*TRAIN, "--out", "{tmp}/run"], lambda w: (w.run(), w.keep()),
        message=r"run holds a finished run of these settings \(metrics\.json\); pass --resume to evaluate its "
                r"checkpoint again, --fresh to start it over .*, or use another folder$",
        then=_same_checkpoint_and_metrics("before")),
    "train without --resume: the folder holds the interrupted run": Row(
        [*TRAIN, "--out", "{tmp}/run"], lambda w: (w.run(metrics=False), w.keep()),
        message=r"run holds an interrupted run of these settings \(a checkpoint, no metrics\.json\); pass --resume "
                r"to continue it, --fresh to start it over",
        then=_same_checkpoint_and_metrics("before")),
    "train --fresh, killed as it writes its first checkpoint": Row(
        [*TRAIN, "--fresh", "--out", "{tmp}/run"], _killed_at_first_save, rc=130, then=_not_finished_after_kill),
    "train --fresh on the finished run": Row(
        [*TRAIN, "--fresh", "--out", "{tmp}/run"],
        lambda w: (w.run(), (w.tmp / "run" / runs.EVAL_METRICS).write_text('{"miou": 0.5}')), rc=0,
        then=_fresh_again),
    "train --resume --fresh": Row(
        [*TRAIN, "--resume", "--fresh", "--out", "{tmp}/run"], lambda w: w.run(),
        message=r"--resume and --fresh: choose one", changes=None),
    # ------------------------------------------------------------- temp files a kill left
    "train --resume: stale temp files are removed": Row(
        [*TRAIN, "--resume", "--out", "{tmp}/run"], _stale_temps, rc=0, then=_stale_temps_gone),
    "train --resume: another process holds the lock": Row(
        [*TRAIN, "--resume", "--out", "{tmp}/run"], _stale_temps,
        message=r"run is in use: pid \d+ on .* is training there; wait for it to finish or use another folder",
        then=_stale_temps_kept, held=True),
    # ------------------------------------------------------------------ JSON of the wrong shape
    "train: config.json is a JSON list": Row(
        [*TRAIN, "--out", "{tmp}/run"],
        lambda w: ((w.tmp / "run").mkdir(), (w.tmp / "run" / runs.CONFIG).write_text("[1, 2]")),
        message=r"run/config\.json: expected a run's settings \(a JSON object\), found a JSON list; the folder's "
                r"run is unknown"),
    "train: config.json is garbled": Row(
        [*TRAIN, "--out", "{tmp}/run"],
        lambda w: ((w.tmp / "run").mkdir(), (w.tmp / "run" / runs.CONFIG).write_text('{"method": "sup')),
        message=r"run/config\.json: unreadable \(JSONDecodeError\); expected a run's settings"),
    "ablate: a cell's metrics.json is a JSON list": Row(
        ["ablate", "--grid", "variants=supervised", "fractions=1/16", "seeds=0", "--out", "{tmp}/grid", "--quiet",
         *SETS],
        lambda w: (w.run(f"grid/{CELL}"), (w.tmp / "grid" / CELL / runs.METRICS).write_text("[0.5]")),
        message=rf"grid/{CELL}/metrics\.json: expected a run's metrics", changes="grid"),
    "ablate: a cell's metrics.json is garbled": Row(
        ["ablate", "--grid", "variants=supervised", "fractions=1/16", "seeds=0", "--out", "{tmp}/grid", "--quiet",
         *SETS],
        lambda w: (w.run(f"grid/{CELL}"), (w.tmp / "grid" / CELL / runs.METRICS).write_text('{"miou": 0.')),
        message=rf"grid/{CELL}/metrics\.json: unreadable", changes="grid"),
    # ----------------------------------------------------------------- settings and arguments
    "train --set preset=voc on the smoke preset": Row(
        [*TRAIN, "--set", "preset=voc", "--out", "{tmp}/run"],
        message=r"preset: chosen with --preset \(here 'smoke'\), not set as a field; got preset='voc'", changes=None),
    "evaluate --set dataset=folder": Row(
        ["evaluate", "--checkpoint", "{tmp}/run/checkpoint.pt", "--set", "dataset=folder", "--quiet"],
        lambda w: w.run(), message=r"--set dataset: evaluate keeps the run's own dataset, model and training "
                                   r"settings .*; expected one of eval_crop, ", changes=None),
    "evaluate --set eval_crop past memory": Row(
        ["evaluate", "--checkpoint", "{tmp}/run/checkpoint.pt", "--set", "eval_crop=1000000000", "--quiet"],
        lambda w: w.run(), message=rf"eval_crop: expected at most {limits.MAX_SIDE} px", changes=None),
    "predict --crop below the run's minimum": Row(
        [*PREDICT, "--crop", "8"], lambda w: (w.run(), w.image()),
        message=r"crop: expected at least 32 px for the run in .*run/checkpoint\.pt \(2 x its output stride 16",
        changes=None),
    "predict --crop past memory": Row(
        [*PREDICT, "--crop", "1000000000"], lambda w: (w.run(), w.image()),
        message=rf"crop: expected at most {limits.MAX_SIDE} px", changes=None),
    "predict --device meta": Row(
        [*PREDICT, "--device", "meta"], lambda w: (w.run(), w.image()),
        message=r"device: expected auto, cpu, cuda or cuda:N, got 'meta'", changes=None),
    "predict: an allocation fails": Row(
        [*PREDICT], lambda w: (w.run(), _out_of_memory(w)),
        message=r"out of memory: an allocation of 479769627648 bytes failed \(this machine holds [\d.]+ GiB\); "
                r"expected smaller settings: crop, eval_crop", changes=None),
    # ------------------------------------------------------------ caches and the home folder
    "prepare --out under a regular file": Row(
        ["prepare", "--preset", "smoke", "--jobs", "1", "--out", "{tmp}/a-file/set", "--quiet"],
        lambda w: (w.tmp / "a-file").write_text("a regular file\n"),
        message=r"--out: cannot write to .*a-file/set \(Not a directory\)", changes=None),
    "prepare: $CPCL_KIT_PREPARED under a regular file": Row(
        ["prepare", "--preset", "smoke", "--jobs", "1", "--quiet"],
        lambda w: ((w.tmp / "a-file").write_text("a regular file\n"),
                   w.monkeypatch.setenv("CPCL_KIT_PREPARED", str(w.tmp / "a-file" / "set"))),
        message=r"the prepared set's folder \(\$CPCL_KIT_PREPARED or the kit's cache\): cannot write to .*a-file/set "
                r"\(Not a directory\); .*\(or pass --out\)", changes=None),
    "prepare without a home folder": Row(
        ["prepare", "--preset", "smoke", "--jobs", "1", "--quiet"], lambda w: w.no_home(),
        message=r"--out: no home folder .*; pass --out <folder>, or set \$CPCL_KIT_PREPARED", changes=None),
    "pretrain without a home folder (a backbone to train)": Row(
        ["pretrain", "--preset", "smoke", "--set", "pretrain_steps=1", "--quiet"], lambda w: w.no_home(),
        message=r"--cache: no home folder for the kit's cache .*; pass --cache <folder>, or set \$CPCL_KIT_CACHE",
        changes=None),
    "pretrain without a home folder (the shipped backbone)": Row(
        ["pretrain", "--preset", "smoke", "--quiet"], lambda w: w.no_home(), rc=0, changes=None),
    "pretrain with a home folder that cannot be created": Row(
        ["pretrain", "--preset", "smoke", "--set", "pretrain_steps=1", "--quiet"], _unwritable_cache,
        message=r"--cache: cannot create .*a-file/home/\.cache/cpcl-kit/pretrain \(Not a directory\); pass --cache",
        changes=None),
}


def _members(folder: Path) -> list[Path]:
    from cpcl_kit.experiments import prepared

    return list(prepared.run_dirs(folder, 0).values())


def _tree(root: Path, skip: Path | None) -> dict[str, tuple]:
    """Every entry under ``root`` but ``skip``: (kind, content hash or link target, mode)."""
    out = {}
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        if skip is not None and (here == skip or skip in here.parents):
            dirs[:] = []
            continue
        for name in dirs + names:
            p = here / name
            if skip is not None and p == skip:
                continue
            st = p.lstat()
            if p.is_symlink():
                entry = ("link", os.readlink(p))
            elif p.is_dir():
                entry = ("dir",)
            else:
                entry = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode)
            out[str(p.relative_to(root))] = entry
    return out


def _param(name: str):
    row = ROWS[name]
    marks = [pytest.mark.xfail(strict=True, reason=row.known)] if row.known else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in ROWS])
def test_hostile_input(name, finished, tmp_path, monkeypatch, capsys, request):
    row = ROWS[name]
    world = World(tmp_path, finished, monkeypatch)
    world.victim.parent.mkdir()
    world.victim.write_text(VICTIM_TEXT)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    row.setup(world)
    if row.held:
        request.getfixturevalue("holder")()
    skip = tmp_path / row.changes if row.changes else None
    before = _tree(tmp_path, skip)
    argv = [a.format(tmp=tmp_path, victim=world.victim) for a in row.argv]

    rc = cli.main(argv)

    out, err = capsys.readouterr()
    shown = f"argv: {argv}\nstderr:\n{err}\nstdout:\n{out[-2000:]}"
    assert "Traceback" not in err, shown
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert rc == row.rc, shown
    if row.message is None:
        assert not [line for line in lines if line.startswith("error: ")], shown
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), shown
        assert re.search(row.message, lines[0]), f"{row.message!r} not in the line\n{shown}"
        assert "mIoU" not in out, shown
    assert world.victim.read_text() == VICTIM_TEXT
    after = _tree(tmp_path, skip)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"changed outside {row.changes}: {changed}\n{shown}"
    row.then(tmp_path)


# ------------------------------------------------------------------------- the pieces, directly


def test_remove_stale_temps_needs_the_lock_and_matches_the_pattern_only(tmp_path):
    keep = [tmp_path / n for n in ("checkpoint.pt", ".checkpoint.pt.tmpAB12CD34", ".checkpoint.pt.tmpab12cd3",
                                   ".checkpoint.pt.tmpab12cd345", ".other.pt.tmpab12cd34")]
    gone = tmp_path / ".checkpoint.pt.tmpab12cd34"
    for p in [*keep, gone]:
        p.write_text("x")
    (tmp_path / ".metrics.json.tmpab12cd34").mkdir()  # a folder is never removed
    with pytest.raises(RuntimeError, match="only the holder of the folder's lock"):
        files.remove_stale_temps(tmp_path, r"checkpoint\.pt")
    with files.lock(tmp_path):
        assert files.remove_stale_temps(tmp_path, r"checkpoint\.pt|metrics\.json") == [gone]
    assert all(p.exists() for p in keep) and (tmp_path / ".metrics.json.tmpab12cd34").is_dir()


def test_the_temp_pattern_is_what_write_atomic_makes(tmp_path, monkeypatch):
    """A temp file caught between create and rename has the name remove_stale_temps looks for."""
    seen = []

    def dies(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(tmp_path / "checkpoint.pt", dies)
    assert len(seen) == 1 and files.temp_name_pattern(r"checkpoint\.pt").fullmatch(seen[0]), seen


def test_the_write_probe_leaves_nothing_and_refuses_a_planted_link(tmp_path):
    (tmp_path / files.PROBE).write_text("")  # left by an older kit killed mid-probe: harmless, kept
    assert files.probe_writable(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [files.PROBE]
    (tmp_path / files.PROBE).unlink()
    (tmp_path / "victim").write_text(VICTIM_TEXT)
    (tmp_path / files.PROBE).symlink_to(tmp_path / "victim")
    with pytest.raises(KitError, match=r"write probe is a symbolic link"):
        files.probe_writable(tmp_path)
    assert (tmp_path / "victim").read_text() == VICTIM_TEXT
    with files.lock(tmp_path):  # a probe's temp file left by a kill is a stale temp file of the folder
        (tmp_path / ".write-test.tmpab12cd34").write_text("")
        assert [p.name for p in runs.remove_stale_temps(tmp_path)] == [".write-test.tmpab12cd34"]


def test_holder_does_not_read_through_a_planted_lock_link(tmp_path):
    (tmp_path / "victim").write_text('{"pid": 1, "host": "h", "since": "then"}')
    (tmp_path / files.LOCK).symlink_to(tmp_path / "victim")
    assert files.holder(tmp_path) is None


@pytest.mark.parametrize("content, expected", [
    ("[0.5]", r"expected a run's metrics \(a JSON object with miou\), found a JSON list"),
    ('{"miou": 0.', r"unreadable \(JSONDecodeError\)"),
    ('{"miou": "high"}', r"expected a run's metrics with a number miou, found miou='high'"),
])
def test_a_damaged_metrics_json_is_one_line_naming_it(finished, tmp_path, content, expected):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / runs.METRICS).write_text(content)
    with pytest.raises(KitError, match=rf"^{re.escape(str(run / runs.METRICS))}: {expected}.*; delete it"):
        runs.load_run(run, nets=False)


def test_a_saved_config_that_is_not_an_object_is_named():
    with pytest.raises(KitError, match=r"^config: expected the settings as a JSON object, got a list$"):
        config.load_config_dict([1, 2])


def test_the_memory_bounds_follow_the_machine():
    """The size bounds come from the memory read at import, and every preset fits in 1 GiB."""
    assert limits.MEMORY == (limits.machine_memory() or 1 << 40)
    assert config.LIMITS["crop"].hi == limits.MAX_SIDE and limits.MAX_SIDE ** 2 * limits.PIXEL_BYTES <= limits.MEMORY
    for preset in config.PRESETS:
        cfg = config.make_config(preset)
        step = (cfg.batch_size + 2 * cfg.unlabeled_batch_size) * cfg.crop ** 2 * limits.PIXEL_BYTES
        assert step < 1 << 30 and cfg.num_workers <= (1 << 30) // limits.WORKER_BYTES, preset


@pytest.mark.parametrize("error, size", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 48000000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "48000000000000 bytes"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB"),
     "20.00 GiB"),
    # numpy's own MemoryError subclass says it so
    (MemoryError("Unable to allocate 149. GiB for an array with shape (2, 100000, 100000) and data type int64"),
     "149. GiB"),
    (MemoryError(), None),
])
def test_an_allocation_that_fails_is_one_line(error, size):
    line = cli.out_of_memory(error)
    assert line.startswith("out of memory: ") and "\n" not in line and "crop, eval_crop, batch_size" in line
    assert (f"an allocation of {size} failed" if size else "an allocation failed") in line, line
    assert ("on the GPU" in line) == isinstance(error, torch.OutOfMemoryError), line
    assert cli.out_of_memory(RuntimeError("shape mismatch")) is None and cli.out_of_memory(KeyError()) is None
