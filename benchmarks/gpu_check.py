"""One prepared check of the CUDA path on a GPU machine: ``make gpu-check GPU_OUT=<folder>``.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out <folder>               # the GPU machine
    PYTHONPATH=. python3 benchmarks/gpu_check.py --out <folder> --cpu-smoke   # every stage, tiny, on CPU

Runs with the machine's own PyTorch and nothing installed. Every stage is a child process with its
own time limit, so a crash, a hang or an out-of-memory in one stage leaves the others running; the
whole check keeps to ``--budget`` seconds (the test suite runs beside the GPU stages that follow the
speed benchmark, so the timings are taken on a quiet machine). Stages, most valuable first:

  env       nvidia-smi, torch / CUDA / cuDNN versions, GPU, native bf16, TF32 defaults
  speed     benchmarks/speed.py at the paper size (resnet50_v1c, OS16, 512 px, 8+8+8, head 256):
            bf16 AMP with TF32 on (main JSON), channels_last, full fp32 (TF32 off); no torch.compile
            (its compile time alone exceeds a stage)
  doctor    python -m cpcl_kit doctor --preset voc, then --preset cityscapes (800 px, 16+16+16, OHEM):
            timed steps on synthetic batches and the largest batch that fits (before the suite
            starts: its search fills the GPU's memory)
  sync      supervised / CPS / CPCL Trainer.steps under torch.cuda.set_sync_debug_mode("error"):
            tests/test_cuda.py (small) and the voc preset's step at the paper size; then CPCL in fp16
            autocast, its GradScaler's host syncs counted (sync debug mode "warn")
  voc       the voc preset on a generated VOC-layout tree of full-size JPEGs and PNG masks:
            trained by the CLI, killed after its half-way checkpoint, resumed with --resume;
            the loss must fall and the resumed run must finish at the last iteration; it evaluates
            every quarter (eval_every: the curve must hold each quarter once) and, where the
            tensorboard package is installed (never installed here), writes TensorBoard events
            whose steps must be unique across the kill and the resume
  torchrun  torchrun --nproc_per_node 2 -m cpcl_kit train, both processes on the one GPU (gloo with CUDA
            tensors, $CPCL_KIT_DIST_BACKEND; NCCL needs a GPU per process): sync_bn off, sync_bn on (on
            the CPU smoke: refused in one line), and a run killed after its first checkpoint and
            resumed; each must finish with world_size 2 in its metrics
  suite     the test suite (pytest -n 8), browser tests deselected; the failing tests are listed
            by name in the JSON and the markdown

Everything goes to the one output folder: gpu-check.json (commit, command, versions, seconds, pass or
fail and key figures per stage, the goals), gpu-check.log (every child's output), the speed JSONs
(speed-<gpu>.json is the one for benchmarks/results/) and the voc run's history. Scratch files live
in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
LOG_LIMIT = 15 * 2**20  # the log is cut to its last 15 MiB (files that come back are at most 16 MiB)

# Sizes of the real check and of the CPU smoke (every stage end to end in a few minutes on a CPU).
SIZES = {
    "gpu": dict(device="cuda", backbone="resnet50_v1c", crop=512, batch=8, head=256, os=16, steps=8, warmup=3,
                pairs=8, var_steps=5, var_warmup=2, image=(500, 375),
                train_images=48, val_images=6, labeled=12, iterations=120, voc_workers=4, torchrun_iters=6,
                suite=["-n", "8", "--dist", "loadfile", "-m", "not browser"]),
    "cpu": dict(device="cpu", backbone="resnet18", crop=32, batch=2, head=8, os=16, steps=2, warmup=1,
                pairs=2, var_steps=1, var_warmup=1, image=(80, 60),
                train_images=12, val_images=2, labeled=4, iterations=8, voc_workers=0, torchrun_iters=2,
                suite=["tests/test_notebooks.py"]),
}
# Stage time limits, seconds (GPU machine); each is also cut to what the budget has left. The speed
# runs leave SPEED_RESERVE seconds of the budget to the stages after them.
LIMITS = {"env": 30, "speed_main": 110, "speed_channels_last": 60, "speed_fp32": 60,
          "doctor": 100, "sync_tests": 90, "sync_paper": 60, "voc": 150, "torchrun": 150, "suite": 240}
SPEED_RESERVE = 250
CPU_LIMITS = {**{k: 300 for k in LIMITS}, "suite": 300}


# ------------------------------------------------------------------------------------------------
# running children


class Check:
    def __init__(self, out: Path, work: Path, budget: float, cpu: bool):
        self.out, self.work, self.cpu = out, work, cpu
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.log_path = out / "gpu-check.log"
        self.log = open(self.log_path, "w", buffering=1)
        self.size = SIZES["cpu" if cpu else "gpu"]
        self.limits = CPU_LIMITS if cpu else LIMITS
        self.stages: dict[str, dict] = {}
        self.env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
                        PYTHONUNBUFFERED="1")
        if cpu:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke never touches a GPU, even where one is

    def say(self, text: str) -> None:
        line = f"[gpu-check {time.monotonic() - self.t0:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def limit(self, name: str, reserve: float = 0.0) -> float:
        """Stage ``name``'s time limit, cut so that ``reserve`` seconds of the budget stay for later."""
        return min(self.limits[name], self.left() - reserve)

    def start(self, name: str, cmd: list[str], log=None, env=None) -> subprocess.Popen | None:
        self.say(f"{name}: $ {' '.join(cmd)}")
        # Every process of the stage inherits this tag, so a kill finds them all: torchrun starts its
        # workers in sessions of their own, out of reach of a kill of the stage's process group.
        tag = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log or self.log, stderr=subprocess.STDOUT,
                                    env={**(env or self.env), STAGE_TAG: tag}, start_new_session=True)
        except OSError as e:
            self.say(f"{name}: could not start: {e}")
            return None
        proc.stage_tag = tag
        return proc

    def finish(self, name: str, proc: subprocess.Popen | None, limit: float, t_start: float) -> dict:
        """Wait for ``proc`` up to ``limit`` seconds from ``t_start``; kill its process group after."""
        if proc is None:
            return {"rc": None, "timed_out": False, "seconds": 0.0}
        timed_out = False
        try:
            proc.wait(timeout=max(0.1, limit - (time.monotonic() - t_start)))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
        rc = proc.returncode
        sec = round(time.monotonic() - t_start, 1)
        self.say(f"{name}: {'TIMED OUT after' if timed_out else f'exit {rc} after'} {sec} s")
        return {"rc": rc, "timed_out": timed_out, "seconds": sec}

    def run(self, name: str, cmd: list[str], limit_name: str | None = None, env=None, reserve: float = 0.0,
            limit: float | None = None) -> dict:
        limit = min(self.limit(limit_name or name, reserve), limit if limit is not None else float("inf"))
        if limit < 5:
            self.say(f"{name}: skipped, the budget is spent")
            return {"rc": None, "timed_out": False, "seconds": 0.0, "skipped": "budget spent"}
        t = time.monotonic()
        return self.finish(name, self.start(name, cmd, env=env), limit, t)

    def child(self, stage: str, *args: str) -> list[str]:
        """This script as a child running one in-process stage (its result JSON lands in work/)."""
        return [PY, str(Path(__file__).resolve()), "--child", stage, "--work", str(self.work),
                *(["--cpu-smoke"] if self.cpu else []), *args]

    def result(self, stage: str) -> dict:
        path = self.work / f"{stage}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}


STAGE_TAG = "GPU_CHECK_STAGE"


def _tagged(tag: str) -> list[int]:
    """The processes whose environment holds ``GPU_CHECK_STAGE=tag`` (Linux /proc)."""
    needle = f"{STAGE_TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    for pid in _tagged(getattr(proc, "stage_tag", "")) if getattr(proc, "stage_tag", None) else []:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------
# stages (parent side)


def stage_env(c: Check) -> dict:
    r = c.run("env", c.child("env"))
    info = c.result("env")
    return {**r, "ok": r["rc"] == 0 and bool(info), **info}


def _speed_cmd(c: Check, out: Path, *extra: str, steps=None, warmup=None) -> list[str]:
    s = c.size
    return [PY, "benchmarks/speed.py", "--device", s["device"], "--backbone", s["backbone"], "--crop", str(s["crop"]),
            "--batch", str(s["batch"]), "--head-channels", str(s["head"]), "--output-stride", str(s["os"]),
            "--steps", str(steps or s["steps"]), "--warmup", str(warmup or s["warmup"]), "--pairs", str(s["pairs"]),
            "--no-isolate", "--out", str(out), *extra]


def _speed_figures(res: dict) -> dict:
    """The key numbers of one speed.py JSON: images/s and peak memory per method, the ratios."""
    fig = {t["method"]: ({"error": t["error"]} if "error" in t else
                         {"amp": t["amp"], "images_per_s": round(t["images_per_s"], 2),
                          "s_per_step": round(t["median_s"], 4), "peak_mem_mib": round(t["peak_mem_mib"]),
                          "warmup_s": round(t.get("warmup_s", 0), 1)})
           for t in res.get("training", [])}
    amp = res.get("amp", {})
    if "speedup" in amp:
        fig["amp_speedup_cpcl"] = round(amp["speedup"], 3)
        fig["cpcl_fp32_images_per_s"] = round(amp["fp32"]["images_per_s"], 2)
    if "ratio" in res.get("overhead", {}):
        fig["cpcl_overhead_ratio"] = round(res["overhead"]["ratio"], 4)
    fig["tf32"] = res.get("tf32")
    return fig


def stage_speed(c: Check) -> dict:
    s = c.size
    runs = {  # name: (extra args, steps, warm-up, limit)
        "main": (["--tf32", "on"], None, None, "speed_main"),
        "channels_last": (["--tf32", "on", "--channels-last", "--sections", "training,amp"],
                          s["var_steps"], s["var_warmup"], "speed_channels_last"),
        "fp32": (["--tf32", "off", "--no-amp", "--sections", "training"], s["var_steps"], s["var_warmup"],
                 "speed_fp32"),
    }
    out, variants, main_file = {}, {}, None
    for name, (extra, steps, warmup, limit) in runs.items():
        path = c.work / f"speed-{name}.json"
        r = c.run(f"speed/{name}", _speed_cmd(c, path, *extra, steps=steps, warmup=warmup), limit,
                  reserve=0 if c.cpu else SPEED_RESERVE)
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            res = None
        r["ok"] = r["rc"] == 0 and res is not None
        if res is not None:
            r["figures"] = _speed_figures(res)
            variants[name] = res
            if name == "main":
                main_file = c.out / f"speed-{res['device']}.json"
                shutil.copyfile(path, main_file)
                r["file"] = main_file.name
                r["copy_to"] = f"benchmarks/results/speed-{res['device']}.json"
        out[name] = r
    if variants:
        _write_json(c.out / "speed-variants.json", variants)
    ok = out["main"]["ok"] and all(v["ok"] or v.get("skipped") for v in out.values())
    return {"ok": ok, "seconds": round(sum(v["seconds"] for v in out.values()), 1), "runs": out}


def stage_doctor(c: Check) -> dict:
    """``doctor`` for the voc preset, then for cityscapes (OHEM at 800 px): each its own JSON."""
    out = {name: _doctor(c, name) for name in ("voc", "cityscapes")}
    return {"ok": all(r["ok"] for r in out.values()), "seconds": round(sum(r["seconds"] for r in out.values()), 1),
            "summary": "; ".join(f"{k}: {r.get('summary', 'no report')}" for k, r in out.items()), **out}


def _doctor(c: Check, preset: str) -> dict:
    s = c.size
    path = c.out / f"doctor-{preset}.json"
    cmd = [PY, "-m", "cpcl_kit", "doctor", "--preset", preset, "--quiet", "--out", str(path),
           "--set", f"device={s['device']}"]
    if c.cpu:
        cmd += ["--steps", "1", "--warmup", "1", "--set", f"backbone={s['backbone']}", "--set", f"crop={s['crop']}",
                "--set", f"batch_size={s['batch']}", "--set", f"unlabeled_batch_size={s['batch']}",
                "--set", f"head_channels={s['head']}"]
    r = c.run(f"doctor/{preset}", cmd, "doctor")
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError):
        rep = None
    r["ok"] = r["rc"] == 0 and rep is not None and rep.get("steps", {}).get("images_per_s", 0) > 0
    if rep is not None:
        st, bs, lr = rep["steps"], rep.get("batch_search", {}), rep.get("lr", {})
        r["file"] = path.name
        r["figures"] = {"images_per_s": round(st["images_per_s"], 2), "peak_mem_mib": round(st["peak_mem_mib"]),
                        "largest_batch": bs.get("largest"), "largest_exact": bs.get("exact"),
                        "search_s": bs.get("seconds"), "lr_for_largest": lr.get("lr"),
                        "data": rep["data"]["status"], "backbone_weights": rep["backbone_weights"]["status"]}
        largest = bs.get("largest", "not searched")
        r["summary"] = (f"{st['method']} {st['batch_size']}+{st['unlabeled_batch_size']}+{st['unlabeled_batch_size']} "
                        f"at {st['crop']} px: {st['images_per_s']:.1f} images/s; largest batch {largest}")
    return r


def stage_sync(c: Check) -> dict:
    tests = c.run("sync/tests", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/test_cuda.py",
                                 *([] if c.cpu else ["-k", "on_cuda or cuda_pieces"])], "sync_tests")
    tests["ok"] = tests["rc"] == 0
    paper = c.run("sync/paper", c.child("sync"), "sync_paper")
    paper = {**paper, **c.result("sync")}
    paper["ok"] = paper["rc"] == 0 and paper.get("ok", False)
    return {"ok": tests["ok"] and paper["ok"], "seconds": round(tests["seconds"] + paper["seconds"], 1),
            "tests": tests, "paper_size": paper}


def stage_voc(c: Check) -> dict:
    s = c.size
    t = time.monotonic()
    limit = c.limit("voc")
    if limit < 20:
        return {"ok": False, "skipped": "budget spent", "seconds": 0.0}
    data = c.work / "voc-data"
    made = c.run("voc/data", c.child("voc-data", "--data", str(data)), "voc", limit=60)
    if made["rc"] != 0:
        return {"ok": False, "seconds": made["seconds"], "error": "the synthetic VOC tree was not made"}
    run_dir = c.work / "voc-run"
    n = s["iterations"]
    cmd = [PY, "-m", "cpcl_kit", "train", "--preset", "voc", "--data-root", str(data), "--labeled", str(s["labeled"]),
           "--quiet", "--out", str(run_dir), "--set", f"iterations={n}", "--set", f"checkpoint_every={n // 2}",
           "--set", f"log_every={max(1, n // 16)}", "--set", "backbone_weights=none",
           "--set", f"eval_every={n // 4}", "--set", f"tb_image_every={n // 2}",
           "--set", f"device={s['device']}", "--set", f"num_workers={s['voc_workers']}"]
    if c.cpu:
        cmd += ["--set", "backbone=resnet18", "--set", f"crop={s['crop'] * 2}", "--set", f"head_channels={s['head']}",
                "--set", "batch_size=2", "--set", "unlabeled_batch_size=2", "--set", f"eval_crop={s['crop'] * 2}"]
    # First run: killed as soon as its half-way checkpoint exists (an interrupted job).
    t1 = time.monotonic()
    proc = c.start("voc/first-half", cmd)
    killed_at = None
    ckpt = run_dir / "checkpoint.pt"
    while proc is not None and proc.poll() is None and time.monotonic() - t < limit:
        if ckpt.exists():
            _kill(proc)
            killed_at = round(time.monotonic() - t1, 1)
            c.say(f"voc/first-half: killed after {killed_at} s, once checkpoint.pt was written")
            break
        time.sleep(0.2)
    first = c.finish("voc/first-half", proc, max(1.0, limit - (time.monotonic() - t)), t1)
    second = (c.run("voc/resume", cmd + ["--resume"], "voc", limit=limit - (time.monotonic() - t))
              if killed_at is not None else {"skipped": "not killed"})
    checked = c.run("voc/check", c.child("voc-check", "--run", str(run_dir), "--iterations", str(n)), "voc",
                    limit=30)
    res = c.result("voc-check")
    for name in ("history.csv", "val_curve.csv"):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, c.out / f"voc-{name}")
    ok = killed_at is not None and second.get("rc") == 0 and checked["rc"] == 0 and res.get("ok", False)
    run = {("run_seconds" if k == "seconds" else k): v for k, v in res.items()}  # the run's training seconds
    return {**run, "ok": ok, "seconds": round(time.monotonic() - t, 1), "iterations": n,
            "killed_after_s": killed_at, "first": first, "resume": second}


REFUSED_SYNC_BN = "sync_bn: SyncBatchNorm runs on CUDA processes only"


def stage_torchrun(c: Check) -> dict:
    """Two processes on the one device: sync_bn off and on, and a run killed after its first
    checkpoint and resumed. On the GPU both processes share cuda:0 over gloo; on the CPU smoke they
    are two CPU processes, where sync_bn must be refused in one line (exit 2)."""
    s = c.size
    t = time.monotonic()
    env = dict(c.env, OMP_NUM_THREADS="1", CPCL_KIT_DIST_BACKEND="gloo")
    n = 2 * s["torchrun_iters"]

    def command(out: Path, sync_bn: bool) -> list[str]:
        return [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
                "-m", "cpcl_kit", "train", "--method", "cpcl", "--preset", "smoke", "--quiet", "--out", str(out),
                "--set", f"iterations={n}", "--set", f"checkpoint_every={n // 2}", "--set", f"log_every={n // 2}",
                "--set", "backbone_weights=none", "--set", f"sync_bn={str(sync_bn).lower()}",
                "--set", f"device={'cpu' if c.cpu else 'cuda:0'}", "--set", "eval_every=0", "--set", "tb_image_every=0"]

    def world(out: Path) -> dict | None:
        try:
            m = json.loads((out / "metrics.json").read_text())
        except (OSError, ValueError):
            return None
        return {k: m.get(k) for k in ("iterations", "miou", "world_size", "seconds")}

    res = {}
    for name, sync_bn in (("sync_bn_off", False), ("sync_bn_on", True)):
        out = c.work / f"torchrun-{name}"
        r = c.run(f"torchrun/{name}", command(out, sync_bn), "torchrun", env=env, limit=60)
        r["metrics"] = world(out)
        if c.cpu and sync_bn:  # each worker exits 2 with the one line; torchrun itself then exits 1
            c.log.flush()
            r["expected"] = REFUSED_SYNC_BN
            r["ok"] = r["rc"] != 0 and c.log_path.read_text().count(f"error: {REFUSED_SYNC_BN}") >= 2
        else:
            r["ok"] = (r["rc"] == 0 and r["metrics"] is not None and r["metrics"]["world_size"] == 2
                       and r["metrics"]["iterations"] == n)
        res[name] = r
    # killed once its half-way checkpoint exists, then resumed by the same two processes
    out = c.work / "torchrun-resumed"
    t1 = time.monotonic()
    proc = c.start("torchrun/first-half", command(out, False), env=env)
    killed_at = None
    while proc is not None and proc.poll() is None and time.monotonic() - t1 < 60:
        if (out / "checkpoint.pt").exists():
            _kill(proc)
            killed_at = round(time.monotonic() - t1, 1)
            c.say(f"torchrun/first-half: killed after {killed_at} s, once checkpoint.pt was written")
            break
        time.sleep(0.2)
    c.finish("torchrun/first-half", proc, 60, t1)
    left = _tagged(getattr(proc, "stage_tag", "")) if proc is not None else []
    second = (c.run("torchrun/resume", command(out, False) + ["--resume"], "torchrun", env=env, limit=60)
              if killed_at is not None else {"skipped": "not killed"})
    second["metrics"] = world(out)
    res["kill_and_resume"] = {"killed_after_s": killed_at, "workers_left_after_kill": len(left), **second,
                              "ok": killed_at is not None and not left and second.get("rc") == 0
                              and (second["metrics"] or {}).get("world_size") == 2}
    summary = "; ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in res.items())
    return {"ok": all(v["ok"] for v in res.values()), "seconds": round(time.monotonic() - t, 1),
            "summary": f"2 processes: {summary}", **res}


def start_suite(c: Check):
    log = open(c.work / "suite.log", "w")
    env = dict(c.env, OMP_NUM_THREADS="1")
    cmd = [PY, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *c.size["suite"]]
    if c.cpu:  # the GPU machine's Python has no Jupyter tools: the smoke hides this venv's
        env["PYTHONPATH"] = f"{_module_blocker(c.work)}{os.pathsep}{env['PYTHONPATH']}"
    # its limit counts from its start, cut to the budget left then (it runs beside the GPU stages)
    return c.start("suite", cmd, log=log, env=env), time.monotonic(), log, max(30.0, min(c.limits["suite"], c.left()))


def finish_suite(c: Check, started) -> dict:
    proc, t, log, suite_limit = started
    r = c.finish("suite", proc, suite_limit, t) if proc else {"rc": None, "seconds": 0.0, "timed_out": False}
    log.close()
    text = (c.work / "suite.log").read_text(errors="replace")
    c.log.write("----- suite output -----\n" + text + "----- end of suite output -----\n")
    tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [""]
    # seconds: from its start until collected (it may finish earlier; pytest's own time is in summary)
    r.update(ok=r["rc"] == 0, summary=tail[0].strip("= "), failures=suite_failures(text))
    return r


MAX_FAILURES = 40  # listed by name; the log holds every one


def suite_failures(text: str) -> list[dict]:
    """The FAILED and ERROR lines of pytest's short summary (``-rfE``): test id, kind and the first
    line of the reason, at most ``MAX_FAILURES``."""
    out = []
    for line in text.splitlines():
        kind = next((k for k in ("FAILED", "ERROR") if line.startswith(k + " ")), None)
        if kind is None:
            continue
        test, _, reason = line[len(kind) + 1:].partition(" - ")
        out.append({"test": test.strip(), "kind": kind.lower(), "reason": reason.strip()[:300]})
    return out[:MAX_FAILURES]


def _module_blocker(work: Path) -> Path:
    """A sitecustomize that makes the Jupyter tools unimportable, as on the GPU machine."""
    d = work / "no-jupyter"
    d.mkdir(exist_ok=True)
    names = ["papermill", "nbformat", "nbconvert", "nbclient", "ipykernel", "ipywidgets", "jupyterlab", "jupyter"]
    (d / "sitecustomize.py").write_text("import sys\nfor _n in %r:\n    sys.modules[_n] = None\n" % names)
    return d


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _provenance():
    """``cpcl_kit.provenance`` of this checkout: the script runs on the machine's own Python with
    nothing installed, so the kit is found through the checkout, not the environment."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from cpcl_kit import provenance

    return provenance


def _code() -> dict:
    """The checkout's commit and whether any tracked file differs (``provenance.code_version``)."""
    return _provenance().code_version(full=True, tree=True)


def goals(stages: dict) -> dict:
    main = stages.get("speed", {}).get("runs", {}).get("main", {}).get("figures", {})
    amp, over = main.get("amp_speedup_cpcl"), main.get("cpcl_overhead_ratio")
    sync = stages.get("sync", {})
    return {"bf16_amp_vs_fp32_cpcl": {"value": amp, "goal": ">= 1.8", "met": None if amp is None else amp >= 1.8,
                                      "note": "fp32 with TF32 convolutions and matmuls (torch's default convs)"},
            "cpcl_step_vs_bare_step": {"value": over, "goal": "<= 1.05", "met": None if over is None else over <= 1.05},
            "no_host_sync_in_step": {"value": sync.get("ok"), "met": sync.get("ok")}}


def main_check(args, argv=None) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    c = Check(out, work, args.budget, args.cpu_smoke)
    # the command as a user types it in a clone (the JSON is committed): --out is this machine's folder
    command = _provenance().command_line(__file__, argv, python=Path(PY).name)
    summary = {"command": command, "commit": _code()["commit"],
               "worktree_dirty": bool(_code()["dirty"]),
               "mode": "cpu-smoke" if c.cpu else "gpu", "budget_s": args.budget, "stages": c.stages}
    summary_path = out / "gpu-check.json"

    def record(name, fn):
        c.say(f"== {name} ==")
        t = time.monotonic()
        try:
            c.stages[name] = fn(c)
        except Exception as e:  # a bug in this script's own stage code must not end the check
            c.stages[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        c.stages[name].setdefault("seconds", round(time.monotonic() - t, 1))
        c.say(f"{name}: {'PASS' if c.stages[name].get('ok') else 'FAIL'}")
        summary["seconds"] = round(time.monotonic() - c.t0, 1)
        _write_json(summary_path, summary)  # kept current: a check cut short still leaves its results

    suite = None
    try:
        record("env", stage_env)
        record("speed", stage_speed)
        record("doctor", stage_doctor)  # its batch search fills the GPU: before the suite's CUDA tests
        if not c.cpu:  # CPU-bound: beside the GPU stages, once the timings are taken
            suite = start_suite(c)
        record("sync", stage_sync)
        record("voc", stage_voc)
        record("torchrun", stage_torchrun)
        if c.cpu:  # a CPU has no cores to spare for it beside the other stages
            suite = start_suite(c)
        record("suite", lambda c_: finish_suite(c_, suite))
        suite = None
    finally:
        if suite is not None and suite[0] is not None:
            _kill(suite[0])
        summary["goals"] = goals(c.stages)
        summary["passed"] = [k for k, v in c.stages.items() if v.get("ok")]
        summary["failed"] = [k for k, v in c.stages.items() if not v.get("ok")]
        summary["seconds"] = round(time.monotonic() - c.t0, 1)
        _write_json(summary_path, summary)
        c.say(f"done in {summary['seconds']} s: passed {', '.join(summary['passed']) or '-'}; "
              f"failed {', '.join(summary['failed']) or '-'}; results in {out}")
        c.log.close()
        _cap_log(c.log_path)
        render(summary_path)
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if not summary["failed"] else 1


def markdown(summary: dict, variants: dict | None = None) -> str:
    """The check as markdown: each stage's result and seconds, the goals, and (from the speed runs'
    JSON, ``speed-variants.json``) images/s and peak memory of every method and setting timed."""
    env = summary.get("stages", {}).get("env", {})
    lines = [f"# GPU check ({env.get('gpu', 'no GPU')}, torch {env.get('torch')}, CUDA {env.get('cuda')})", "",
             f"`{summary.get('command')}`, commit {summary.get('commit')}, {summary.get('seconds')} s in all."
             + (f" {summary['commit_note']}." if summary.get("commit_note") else ""), "",
             "| stage | result | seconds |", "|---|---|---|"]
    for name, st in summary.get("stages", {}).items():
        result = "pass" if st.get("ok") else "FAIL"
        detail = st.get("summary") or st.get("error") or ""
        lines.append(f"| {name} | {result}{' (' + detail + ')' if detail else ''} | {st.get('seconds')} |")
    failures = summary.get("stages", {}).get("suite", {}).get("failures") or []
    if failures:
        lines += ["", f"Suite failures ({len(failures)} listed; gpu-check.log holds the tracebacks):", "",
                  "| test | kind | reason |", "|---|---|---|"]
        lines += [f"| `{f['test']}` | {f['kind']} | {f['reason'].replace('|', '/')} |" for f in failures]
    lines += ["", "| goal | value | target | met |", "|---|---|---|---|"]
    for name, g in summary.get("goals", {}).items():
        note = f" ({g['note']})" if g.get("note") else ""
        lines.append(f"| {name} | {g.get('value')}{note} | {g.get('goal', '')} | {g.get('met')} |")
    if variants:
        lines += ["", "Training throughput at the paper size (median of the timed steps; peak memory is "
                  "torch.cuda.max_memory_allocated in one process, cuDNN's autotuning included):", "",
                  "| run | method | precision | TF32 | channels_last | images/s | peak MiB |", "|---|---|---|---|---|---|---|"]
        for name, res in ((k, v) for k, v in variants.items() if isinstance(v, dict)):
            tf32 = res.get("tf32", {})
            for r in res.get("training", []):
                lines.append(f"| {name} | {r['method']} | {r['amp']} | "
                             f"{'on' if tf32.get('cudnn_conv') else 'off'} | {r.get('channels_last')} | "
                             f"{r['images_per_s']:.1f} | {r.get('peak_mem_mib', 0):.0f} |")
    return "\n".join(lines) + "\n"


def render(path: Path) -> Path:
    """Write ``<name>.md`` beside a gpu-check JSON (with ``speed-variants.json`` or
    ``<name>-variants.json`` beside it, when there)."""
    summary = json.loads(Path(path).read_text())
    candidates = [Path(path).with_name(Path(path).stem + "-variants.json"), Path(path).with_name("speed-variants.json")]
    found = next((c for c in candidates if c.exists()), None)
    md = Path(path).with_suffix(".md")
    md.write_text(markdown(summary, json.loads(found.read_text()) if found else None))
    return md


def _cap_log(path: Path) -> None:
    if path.stat().st_size > LOG_LIMIT:
        data = path.read_bytes()[-LOG_LIMIT:]
        path.write_bytes(b"[... log cut to its last 15 MiB ...]\n" + data)


# ------------------------------------------------------------------------------------------------
# child stages (in-process, torch imported here only)


def child_env(work: Path, cpu: bool) -> dict:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
            "cpu_count": os.cpu_count(),
            "tf32_defaults": {"cudnn_conv": torch.backends.cudnn.allow_tf32,
                              "matmul": torch.backends.cuda.matmul.allow_tf32}}
    for mod in ("torchvision", "numpy", "pandas", "pytest", "xdist", "sklearn", "tensorboard", "papermill"):
        try:
            info[f"{mod}_version"] = getattr(__import__(mod), "__version__", "?")
        except Exception:
            info[f"{mod}_version"] = None
    if torch.cuda.is_available():
        from cpcl_kit.engine.device import bf16_native

        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                    gpu_memory_gib=round(p.total_memory / 2**30, 1), bf16_native=bf16_native())
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip().splitlines()
        print(smi.stdout)
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"not available: {e}"
    print(json.dumps({k: v for k, v in info.items() if k != "nvidia_smi"}, indent=1))
    return info


def child_sync(work: Path, cpu: bool) -> dict:
    """The voc preset's step at the paper size (or tiny on CPU), three steps after one warm-up, each
    method, under sync debug mode "error" on CUDA (any host synchronisation raises)."""
    import torch

    from cpcl_kit import registry
    from cpcl_kit.config import make_config
    from cpcl_kit.engine.synthetic import synthetic_batch
    from cpcl_kit.engine.trainer import Trainer

    s = SIZES["cpu" if cpu else "gpu"]
    device = torch.device("cpu" if cpu else "cuda", None if cpu else 0)
    res = {"ok": True, "device": str(device), "sync_debug_mode": None if cpu else "error"}
    for method in ("supervised", "cps", "cpcl"):
        cfg = make_config("voc", method=method, backbone=s["backbone"], backbone_weights="none", crop=s["crop"],
                          batch_size=s["batch"], unlabeled_batch_size=s["batch"], head_channels=s["head"],
                          device=str(device))
        trainer = Trainer.create(cfg, device)
        batch = synthetic_batch(cfg, device)
        try:
            trainer.step(registry.method(method).step, batch, 0, lam=1.0)
            if not cpu:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            for it in range(1, 4):
                out = trainer.step(registry.method(method).step, batch, it, lam=1.0)
            if not cpu:
                torch.cuda.set_sync_debug_mode(0)
            res[method] = {"ok": True, "loss": float(out.loss)}
        except Exception as e:
            if not cpu:
                torch.cuda.set_sync_debug_mode(0)
            res[method] = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            res["ok"] = False
        print(method, res[method], flush=True)
        del trainer, batch
    if not cpu:  # fp16 autocast needs CUDA
        res["fp16_cpcl"] = fp16_syncs(device, s)
        print("fp16 CPCL", res["fp16_cpcl"], flush=True)
    res["ohem_order_statistic"] = order_statistic_timing(device, cpu)
    print("ohem order statistic", res["ohem_order_statistic"], flush=True)
    return res


def fp16_syncs(device, s: dict, steps: int = 3) -> dict:
    """CPCL in fp16 autocast: its GradScaler reads the gradients' overflow flag back to the host at
    each step. The host syncs of ``steps`` steps, counted under sync debug mode "warn" (bf16 has none)."""
    import warnings

    import torch

    from cpcl_kit import registry
    from cpcl_kit.config import make_config
    from cpcl_kit.engine.synthetic import synthetic_batch
    from cpcl_kit.engine.trainer import Trainer

    cfg = make_config("voc", method="cpcl", amp="fp16", backbone=s["backbone"], backbone_weights="none",
                      crop=s["crop"], batch_size=s["batch"], unlabeled_batch_size=s["batch"], head_channels=s["head"],
                      device=str(device))
    step = registry.method("cpcl").step
    try:
        trainer = Trainer.create(cfg, device)
        batch = synthetic_batch(cfg, device)
        trainer.step(step, batch, 0, lam=1.0)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for it in range(1, steps + 1):
                    out = trainer.step(step, batch, it, lam=1.0)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0][:200] for w in caught if "synchroniz" in str(w.message).lower()]
        return {"ok": bool(torch.isfinite(out.loss)), "steps": steps, "syncs": len(syncs),
                "syncs_per_step": round(len(syncs) / steps, 2), "first": syncs[:3]}
    except Exception as e:  # noqa: BLE001 - reported, the stage goes on
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def order_statistic_timing(device, cpu: bool, repeats: int = 5) -> dict:
    """OHEM's threshold is the k-th smallest ground-truth probability of the batch. Time the three ways
    to get it at the Cityscapes preset's size (16 images of 800 x 800 px, k = min_kept · 16), on the
    device: ``kthvalue`` (what steps.ohem_ce uses), ``topk`` of the k smallest, and a full sort."""
    import inspect

    import torch

    from cpcl_kit.method.steps import ohem_ce

    per_image = inspect.signature(ohem_ce).parameters["min_kept"].default
    b, side = (2, 32) if cpu else (16, 800)
    n, k = b * side * side, min(per_image * b, b * side * side)
    x = torch.rand(n, generator=torch.Generator().manual_seed(0)).to(device)
    ways = {"kthvalue": lambda: x.kthvalue(k).values,
            "topk": lambda: x.topk(k, largest=False, sorted=False).values.max(),
            "sort": lambda: x.sort().values[k - 1]}
    out = {"elements": n, "k": k, "device": str(device)}
    values = {}
    for name, fn in ways.items():
        values[name] = float(fn())  # warm-up and the value itself
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[f"{name}_ms"] = round(1000 * sorted(times)[len(times) // 2], 3)
    out["same_value"] = len(set(values.values())) == 1
    return out


def child_voc_data(work: Path, cpu: bool, root: Path) -> dict:
    """A VOC 2012 tree (VOCdevkit/VOC2012: JPEGImages, SegmentationClass palette PNGs,
    SegmentationClassAug index PNGs, ImageSets/Segmentation lists) of learnable synthetic scenes:
    each object class has its own colour, objects carry VOC's void (255) outline."""
    import numpy as np
    from PIL import Image, ImageDraw

    s = SIZES["cpu" if cpu else "gpu"]
    w, h = s["image"]
    base = root / "VOCdevkit" / "VOC2012"
    dirs = {k: base / k for k in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (21, 3))
    palette = [int(v) for v in rng.integers(0, 256, 256 * 3)]
    n_train, n_val = s["train_images"], s["val_images"]
    ids = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    for k, name in enumerate(ids):
        img = (colours[0] + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
        mask = Image.new("L", (w, h), 0)
        pic = Image.fromarray(img)
        draw_m, draw_i = ImageDraw.Draw(mask), ImageDraw.Draw(pic)
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(1, 21))
            x0, y0 = int(rng.integers(0, w * 2 // 3)), int(rng.integers(0, h * 2 // 3))
            box = (x0, y0, x0 + int(rng.integers(w // 6, w // 3)), y0 + int(rng.integers(h // 6, h // 3)))
            shape = draw_m.ellipse if rng.random() < 0.5 else draw_m.rectangle
            shape(box, fill=255)  # the void outline, then the object inside it
            shape((box[0] + 2, box[1] + 2, box[2] - 2, box[3] - 2), fill=c)
            (draw_i.ellipse if shape == draw_m.ellipse else draw_i.rectangle)(box, fill=tuple(int(v) for v in colours[c]))
        pic.save(dirs["JPEGImages"] / f"{name}.jpg", quality=90)
        mask.save(dirs["SegmentationClassAug"] / f"{name}.png")
        pal = mask.convert("P")
        pal.putpalette(palette)
        pal.save(dirs["SegmentationClass"] / f"{name}.png")
    sets = dirs["ImageSets/Segmentation"]
    (sets / "train.txt").write_text("\n".join(ids[:n_train // 2]) + "\n")
    (sets / "trainaug.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    print(f"VOC tree: {n_train} train, {n_val} val images of {w}x{h} in {base}")
    return {"ok": True, "train": n_train, "val": n_val, "size": [w, h]}


def child_voc_check(work: Path, cpu: bool, run: Path, iterations: int) -> dict:
    import pandas as pd

    res: dict = {"ok": False}
    try:
        m = json.loads((run / "metrics.json").read_text())
        hist = pd.read_csv(run / "history.csv")
    except (OSError, ValueError) as e:
        res["error"] = f"no finished run: {e}"
        return res
    its = list(hist["iteration"])
    loss = hist["loss"].tolist()
    k = max(1, len(loss) // 4)
    first, last = sum(loss[:k]) / k, sum(loss[-k:]) / k
    res.update(finished_iteration=m.get("iterations"), last_logged=its[-1] if its else None,
               history_rows=len(its), history_increasing=its == sorted(set(its)),
               loss_first=round(first, 4), loss_last=round(last, 4), loss_fell=last < first,
               miou=m.get("miou"), seconds=m.get("seconds"))
    curve = [r.get("iteration") for r in m.get("val_curve") or []]
    want = [iterations * k // 4 for k in range(1, 5)]
    res.update(val_curve_iterations=curve, val_curve_ok=curve == want, best_on_val=m.get("best_on_val"))
    res["tensorboard"] = _tensorboard_check(run, curve)
    res["ok"] = (res["finished_iteration"] == iterations and res["last_logged"] == iterations
                 and res["history_increasing"] and res["loss_fell"] and res["val_curve_ok"]
                 and res["tensorboard"].get("ok", True))
    print(json.dumps(res))
    return res


def _tensorboard_check(run: Path, curve: list) -> dict:
    """The run's TensorBoard events: every scalar tag's steps unique and increasing across the kill
    and the resume, the validation mIoU at the curve's iterations, at least one pseudo-label image.
    Skipped (not failed) where the tensorboard package is not installed: nothing is installed here."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {"skipped": "the tensorboard package is not installed (the run wrote no events)"}
    files = sorted(p.name for p in run.glob("events.out.tfevents*"))
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    steps = {t: [e.step for e in ea.Scalars(t)] for t in tags.get("scalars", [])}
    bad = [t for t, v in steps.items() if v != sorted(set(v))]
    images = len(ea.Images("pseudo_labels")) if "pseudo_labels" in tags.get("images", []) else 0
    val = steps.get("val/miou", [])
    return {"ok": bool(files) and not bad and val == curve and images > 0, "event_files": len(files),
            "scalar_tags": len(steps), "tags_with_repeated_steps": bad, "val_steps": val, "images": images}


def main_child(args) -> int:
    work = Path(args.work)
    if args.child == "env":
        res = child_env(work, args.cpu_smoke)
    elif args.child == "sync":
        res = child_sync(work, args.cpu_smoke)
    elif args.child == "voc-data":
        res = child_voc_data(work, args.cpu_smoke, Path(args.data))
    else:
        res = child_voc_check(work, args.cpu_smoke, Path(args.run), args.iterations)
    _write_json(work / f"{args.child}.json", res)
    return 0 if res.get("ok", True) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="the one folder every result goes to")
    p.add_argument("--budget", type=float, help="seconds for the whole check (default 450; CPU smoke 1800)")
    p.add_argument("--render", type=Path, metavar="JSON", help="only write the markdown of a finished check's JSON")
    p.add_argument("--cpu-smoke", action="store_true", help="every stage at tiny sizes on the CPU")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (data, run folders)")
    p.add_argument("--child", choices=("env", "sync", "voc-data", "voc-check"), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return main_child(args)
    if args.render:
        print(render(args.render))
        return 0
    if args.budget is None:
        args.budget = 1800.0 if args.cpu_smoke else 450.0
    if not args.out:
        p.error("--out: required (the folder for gpu-check.json, gpu-check.log and the speed JSONs)")
    return main_check(args, argv)


if __name__ == "__main__":
    sys.exit(main())
