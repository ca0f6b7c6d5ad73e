"""Nothing lost, nothing unsafe, nothing left to chance — through the CLI, on the CPU.

* A run killed with SIGKILL keeps its last complete checkpoint; ``--resume`` (and the ablation
  runner) continue it to the bit-exact result of an uninterrupted run.
* A NaN/inf loss stops the run with the iteration named, keeps the last good checkpoint, records
  diverged.json and writes no metrics.
* Checkpoints are only read with ``weights_only=True``; one carrying pickled code is refused without
  running it. Split-list entries cannot leave the data root.
* One seed fixes the whole run: two runs give identical history, metrics and weights.

The training runs are separate ``python -m cpcl_kit`` processes started together (module fixture
``runs``) so that they overlap; every test waits only for the runs it reads.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cpcl_kit.cli import main
from cpcl_kit.engine import checkpoint as ckpt
from cpcl_kit.engine.runs import CHECKPOINT
from cpcl_kit.errors import KitError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cpcl_kit"
# One thread per process: the overlapping runs do not fight over the two cores, and all of them
# compute with the same thread count (CPU results are bit-identical only for the same count).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The smoke preset, smaller: 8 iterations (CutMix and pseudo labels from iteration 4 on), batches of
# 2, 32-pixel crops. A checkpoint (two ResNet-18s with Adam states) is still ~270 MB, hence only two.
SMALL = {"iterations": "8", "checkpoint_every": "4", "log_every": "2", "crop": "32", "batch_size": "2",
         "unlabeled_batch_size": "2", "n_train_scenes": "32", "n_val_scenes": "4", "head_channels": "8"}
SETS = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
TRAIN = ["train", "--preset", "smoke", "--quiet", *SETS]  # cpcl, seed 0, labeled 1/16
NAN_ARGS = ["train", "--preset", "smoke", "--method", "supervised", "--quiet", *SETS,
            "--set", "lr=1e12", "--set", "optimizer=sgd", "--set", "log_every=1", "--set", "checkpoint_every=1"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """A fresh ``python -m cpcl_kit`` process."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cpcl_kit", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout: float = 400) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


# A fresh interpreter spends ~4 s of CPU importing torch and torchvision. The training runs are
# therefore forked, one process each, from a Python that has imported the kit once; each child runs
# cpcl_kit/__main__.py exactly as ``python -m cpcl_kit`` does, and is SIGKILLed by its own pid.
# Protocol: a JSON job per line on stdin; the runner answers {"id", "pid"} when it forked and
# {"id", "rc"} when the child ended.
_WARM = r"""
import json, os, runpy, select, sys, time, traceback
import cpcl_kit.cli, cpcl_kit.engine.train, cpcl_kit.engine.checkpoint  # the slow imports, once

def say(msg):
    os.write(1, (json.dumps(msg) + "\n").encode())

def child(job):
    code = 1
    try:
        os.chdir(job["cwd"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], os.O_WRONLY | os.O_CREAT),
                                (2, job["stderr"], os.O_WRONLY | os.O_CREAT)):
            f = os.open(path, flags, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = ["cpcl_kit", *job["argv"]]
        try:
            runpy.run_module("cpcl_kit", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush(); sys.stderr.flush()
        finally:
            os._exit(code)

buf, children, reading = b"", {}, True
while reading or children:
    if reading and select.select([0], [], [], 0.05)[0]:
        data = os.read(0, 65536)
        reading = bool(data)
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            job = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(job)
            children[pid] = job["id"]
            say({"id": job["id"], "pid": pid})
    elif not reading:
        time.sleep(0.05)
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        say({"id": children.pop(pid), "rc": os.waitstatus_to_exitcode(status)})
"""


class _Warm:
    """The warm runner: ``start`` forks one CLI run and returns a Popen-like handle."""

    def __init__(self, folder: Path):
        self.log = folder / "runner.log"
        self.proc = subprocess.Popen([sys.executable, "-c", _WARM], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"), env=ENV)
        self.events: dict[str, dict] = {}
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.cv:
                self.events.setdefault(msg["id"], {}).update(msg)
                self.cv.notify_all()
        with self.cv:
            self.events["<closed>"] = {}
            self.cv.notify_all()

    def wait_for(self, name: str, key: str, timeout: float | None):
        with self.cv:
            self.cv.wait_for(lambda: key in self.events.get(name, {}) or "<closed>" in self.events, timeout)
            if key not in self.events.get(name, {}):
                raise AssertionError(f"runner gave no {key} for {name}: {self.log.read_text()[-3000:]}")
            return self.events[name][key]

    def start(self, name: str, args: list[str], cwd: Path) -> "_Child":
        cwd.mkdir(parents=True, exist_ok=True)
        job = {"id": name, "argv": args, "cwd": str(cwd), "stdout": str(cwd / f"{name}.stdout"),
               "stderr": str(cwd / f"{name}.stderr")}
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        return _Child(self, name, self.wait_for(name, "pid", 120), job)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class _Child:
    def __init__(self, warm: _Warm, name: str, pid: int, job: dict):
        self.warm, self.name, self.pid, self.job = warm, name, pid, job

    @property
    def returncode(self) -> int | None:
        with self.warm.cv:
            return self.warm.events[self.name].get("rc")

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this child's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.warm.wait_for(self.name, "rc", timeout)
        return Path(self.job["stdout"]).read_text(), Path(self.job["stderr"]).read_text()


class Runs:
    """Background CLI runs, started together: a = uninterrupted, b = the same seed again (both
    forked by the warm runner), nan = absurd learning rate (a fresh ``python -m cpcl_kit``)."""

    def __init__(self, base: Path):
        self.base = base
        self.warm = _Warm(base)
        self.procs = {"nan": _start([*NAN_ARGS, "--out", str(base / "nan")], base),
                      "a": self.warm.start("a", [*TRAIN, "--out", str(base / "a")], base),
                      "b": self.warm.start("b", [*TRAIN, "--out", str(base / "b")], base)}
        self.done: dict[str, tuple[int, str, str]] = {}

    def start(self, name: str, args: list[str]) -> _Child:
        self.procs[name] = self.warm.start(name, args, self.base)
        return self.procs[name]

    def wait(self, name: str) -> tuple[int, str, str]:
        if name not in self.done:
            self.done[name] = _finish(self.procs[name])
        return self.done[name]

    def ok(self, name: str) -> Path:
        rc, out, err = self.wait(name)
        assert rc == 0, f"run {name} failed ({rc}):\n{err[-3000:]}"
        return self.base / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    r = Runs(tmp_path_factory.mktemp("runs"))
    yield r
    for p in r.procs.values():
        if p.poll() is None:
            p.kill()
    r.procs["nan"].communicate()
    r.warm.close()
    for big in r.base.rglob("*.pt"):  # ~270 MB each; pytest keeps the last three sessions' folders
        big.unlink()


def _copy_run(src: Path, dst: Path) -> None:
    """Copy a run folder; checkpoints (~270 MB) as hard links, which is safe because a checkpoint is
    only ever replaced by a rename, never rewritten in place."""
    shutil.copytree(src, dst, copy_function=lambda a, b: os.link(a, b) if a.endswith(".pt") else shutil.copy2(a, b))


_LOADED: dict[tuple, dict] = {}


def _load(path: Path) -> dict:
    """ckpt.load, remembered per file version (each is ~270 MB)."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _LOADED:
        _LOADED[key] = ckpt.load(path)
    return _LOADED[key]


def _same(x, y, where="") -> None:
    """Nested dicts / lists / tensors equal exactly (bit for bit)."""
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape, where
        assert torch.equal(x, y), f"{where} differs"
    elif isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for k in x:
            _same(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), where
        for i, (a, b) in enumerate(zip(x, y)):
            _same(a, b, f"{where}[{i}]")
    else:
        assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), f"{where}: {x!r} != {y!r}"


def _assert_same_run(a: Path, b: Path) -> None:
    """Same history and metrics (but for wall-clock seconds) and the same final weights and optimizer
    states, bit for bit."""
    ha, hb = (pd.read_csv(d / "history.csv").drop(columns="seconds") for d in (a, b))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    ma.pop("seconds"), mb.pop("seconds")
    assert ma == mb
    sa, sb = (_load(d / CHECKPOINT) for d in (a, b))
    assert sa["iteration"] == sb["iteration"] == int(SMALL["iterations"])
    _same(sa["nets"], sb["nets"], "nets")
    _same(sa["optimizers"], sb["optimizers"], "optimizers")


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------- nothing lost


@pytest.fixture(scope="module")
def killed(runs):
    """A CLI run SIGKILLed once its checkpoint reached iteration >= 4; a pristine copy of its folder."""
    out = runs.base / "killed"
    proc = runs.start("killed", [*TRAIN, "--out", str(out)])
    path, seen, deadline = out / CHECKPOINT, -1, time.monotonic() + 300
    while seen < 4 and proc.poll() is None and time.monotonic() < deadline:
        if path.exists():
            seen = int(_load(path)["iteration"])
        time.sleep(0.05)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)  # mid-run: iterations 5-8 and the evaluation remain
    _, err = proc.communicate()
    assert alive and seen >= 4, f"no kill: checkpoint iteration {seen}, run ended: {not alive}\n{err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    snapshot = runs.base / "killed-snapshot"
    _copy_run(out, snapshot)
    return out, snapshot


def test_sigkilled_run_keeps_its_checkpoint_and_resumes_bit_exactly(runs, killed):
    out, _ = killed
    assert not (out / "metrics.json").exists()  # a killed run never looks finished
    state = _load(out / CHECKPOINT)  # the last complete checkpoint loads
    assert state["iteration"] == 4 and len(state["history"]) == 2
    rc, stdout, err = _finish(runs.start("resumed", [*TRAIN, "--resume", "--out", str(out)]))
    assert rc == 0, err[-3000:]
    assert "mIoU" in stdout
    _assert_same_run(runs.ok("a"), out)


def test_ablation_counts_only_finished_runs_and_resumes_a_killed_one(killed, tmp_path, monkeypatch):
    """The grid runner counts a run only once its metrics.json exists (the loop writes it to a temp
    file and renames it, last): the killed folder, also when caught half-way through writing
    metrics.json.tmp, is left out of the table and resumed from its checkpoint."""
    ablate = pytest.importorskip("cpcl_kit.experiments.ablate", reason="cpcl_kit/experiments/ablate.py not written yet")
    from cpcl_kit.engine.runs import RunResult

    grid_dir = tmp_path / "grid"
    killed_dir = grid_dir / ablate.run_name("cpcl", "1/16", 0)
    _copy_run(killed[1], killed_dir)  # checkpoint, config, history; no metrics.json
    assert ablate.collect(grid_dir).empty  # not a result
    (killed_dir / "metrics.json.tmp").write_text('{"miou": 0.5, "per_class')
    assert ablate.collect(grid_dir).empty  # nor is a half-written metrics file

    calls = []

    def fake_train(cfg, out_dir=None, resume=False, progress=True, **kw):
        out = Path(out_dir)
        calls.append((out.name, resume))
        assert _load(out / CHECKPOINT)["iteration"] == 4  # what a resume starts from
        m = {"miou": 0.25, "per_class_iou": [0.25] * 11, "pixel_acc": 0.5, "class_names": [],
             "method": cfg.method, "iterations": cfg.iterations, "seconds": 1.0}
        (out / "metrics.json").write_text(json.dumps(m))
        return RunResult(cfg, [], pd.DataFrame(), m, out)

    monkeypatch.setattr("cpcl_kit.engine.train.train", fake_train)
    table = ablate.run_grid({"variants": ["cpcl"], "fractions": ["1/16"], "seeds": [0]}, grid_dir,
                            preset="smoke", overrides=dict(SMALL), progress=False, log=None)
    assert calls == [(killed_dir.name, True)]
    assert len(table) == 1 and table["miou"].iloc[0] == 0.25


def test_checkpoint_write_that_fails_leaves_the_previous_one(tmp_path, monkeypatch):
    """The write-then-rename of runs.save_checkpoint, without a kill: a write that dies half-way (disk
    full, Ctrl-C) leaves the old checkpoint complete and no temp file behind."""
    from cpcl_kit.config import make_config
    from cpcl_kit.engine.runs import save_checkpoint
    from cpcl_kit.engine.trainer import make_optimizer
    from cpcl_kit.nets.deeplab import build_nets

    cfg = make_config("smoke", method="supervised", head_channels=8, backbone_weights="none")
    nets = build_nets(cfg)
    opts = [make_optimizer(n, cfg) for n in nets]
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    path = save_checkpoint(tmp_path / CHECKPOINT, cfg, 4, nets, opts, scaler, [{"iteration": 4}])
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(f.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KitError, match=rf"^{path}: cannot write \(No space left on device\); the previous file is kept$"):
        save_checkpoint(path, cfg, 8, nets, opts, scaler, [])
    monkeypatch.undo()
    assert ckpt.load(path)["iteration"] == 4
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]


def test_nan_loss_stops_names_the_iteration_and_keeps_the_last_good_checkpoint(runs):
    rc, stdout, err = runs.wait("nan")
    out = runs.base / "nan"
    assert rc == 2, err[-3000:]
    line = _one_error_line(err)
    m = re.fullmatch(r"error: training diverged: the loss became NaN or infinite at iteration (\d+); "
                     r"the last good checkpoint \(iteration (\d+)\) is kept.*; lower lr or check the data", line)
    assert m, line
    bad, good = int(m.group(1)), int(m.group(2))
    info = json.loads((out / "diverged.json").read_text())
    assert (info["iteration"], info["last_good_iteration"]) == (bad, good) and 0 < good < bad
    assert info["message"] == line[len("error: "):]
    assert not (out / "metrics.json").exists()  # never NaN metrics
    state = ckpt.load(out / CHECKPOINT)
    assert state["iteration"] == good
    assert all(torch.isfinite(t).all() for sd in state["nets"] for t in sd.values() if t.is_floating_point())
    hist = pd.read_csv(out / "history.csv")
    assert hist["iteration"].max() <= good and hist["loss"].notna().all() and hist["loss"].map(math.isfinite).all()


def test_divergence_before_any_checkpoint_does_not_promise_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*NAN_ARGS, "--set", "checkpoint_every=50", "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "diverged" in line and not (out / CHECKPOINT).exists()
    assert "is kept" not in line, line


# ----------------------------------------------------------------------------------- security


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            owner = ast.unparse(node.func.value)
            if owner in ("torch", "torch.serialization"):
                yield node


def _sources():
    """(path, parsed module) of every package module and every notebook code cell (magics dropped)."""
    for py in sorted(PACKAGE.rglob("*.py")):
        yield py, ast.parse(py.read_text())
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                code = "\n".join(ln for ln in lines if not ln.lstrip().startswith(("%", "!")))
                yield nb, ast.parse(textwrap.dedent(code))


def test_every_torch_load_uses_weights_only_and_nothing_unpickles():
    found, bad = 0, []
    for path, tree in _sources():
        for call in _torch_load_calls(tree):
            found += 1
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                bad.append(f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}")
        for node in ast.walk(tree):  # other ways to unpickle untrusted files
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                kws = {k.arg: k.value for k in node.keywords}
                allow = kws.get("allow_pickle")
                if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load") or (
                        name in ("np.load", "numpy.load") and not (isinstance(allow, ast.Constant) and allow.value is False)
                        and allow is not None):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}(...)")
    assert found >= 1, "no torch.load call found: the scan is looking in the wrong place"
    assert not bad, "unsafe loading:\n" + "\n".join(bad)


class _RunsACommand:
    """Unpickling this runs a shell command (here: it creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class _SomeClass:
    pass


def test_checkpoint_with_pickled_code_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil" / CHECKPOINT
    evil.parent.mkdir()
    torch.save({"format": ckpt.FORMAT, "config": {}, "x": _RunsACommand(marker)}, evil)
    # The file really is dangerous: plain unpickling runs the command.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(KitError, match=r"holds pickled Python objects \(posix\.system\).*refused"):
        ckpt.load(evil)
    assert main(["evaluate", "--checkpoint", str(evil), "--quiet"]) == 2
    assert "posix.system" in _one_error_line(capsys.readouterr().err)
    assert main([*TRAIN, "--resume", "--out", str(evil.parent)]) == 2
    assert "refused" in _one_error_line(capsys.readouterr().err)
    assert not marker.exists()
    assert not (evil.parent / "metrics.json").exists()

    other = tmp_path / "some.pt"
    torch.save({"format": ckpt.FORMAT, "x": _SomeClass()}, other)
    with pytest.raises(KitError, match=r"_SomeClass\), not only tensors"):
        ckpt.load(other)


def _tiny_voc_root(root: Path, train_list: str = "2007_000000\n") -> Path:
    for d in ("train_aug/image", "train_aug/label", "val/image", "val/label"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "train_aug.txt").write_text(train_list)
    (root / "val.txt").write_text("2008_000001\n")
    return root


@pytest.mark.parametrize("where", ["labeled_list", "unlabeled_list", "root_train_list"])
def test_split_entries_cannot_escape_the_data_root(where, tmp_path, capsys):
    (tmp_path / "secret.jpg").write_bytes(b"outside the root")
    root = _tiny_voc_root(tmp_path / "voc", "2007_000000\n../../secret\n" if where == "root_train_list" else "2007_000000\n")
    (tmp_path / "good.txt").write_text("2007_000000\n")
    (tmp_path / "evil.txt").write_text("2007_000000\n../../secret\n")
    lists = {"labeled_list": ["--labeled-list", str(tmp_path / "evil.txt")],
             "unlabeled_list": ["--labeled-list", str(tmp_path / "good.txt"),
                                "--unlabeled-list", str(tmp_path / "evil.txt")],
             "root_train_list": ["--labeled", "1/2"]}[where]
    rc = main(["train", "--dataset", "voc", "--data-root", str(root), "--preset", "smoke", "--quiet",
               "--set", "crop=32", "--set", "backbone_weights=none", *lists, "--out", str(tmp_path / "out")])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'../../secret' would escape the data root" in line
    assert ("evil.txt" if where != "root_train_list" else "train_aug.txt") in line
    assert not (tmp_path / "out" / "metrics.json").exists()


# ------------------------------------------------------------------------------ reproducibility


def test_same_seed_same_run_through_the_cli(runs):
    """Splits, initialisation, augmentation, CutMix boxes and loader order all follow the seed: two
    runs agree on every logged number (pseudo-label statistics included) and every weight."""
    a, b = runs.ok("a"), runs.ok("b")
    _assert_same_run(a, b)
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    hist = pd.read_csv(a / "history.csv")
    assert (hist["lambda"] > 0).any() and hist["agreement"].notna().any()  # CutMix steps were run
