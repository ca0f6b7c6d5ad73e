"""Two gloo processes on loopback train like one run: shared indicator, identical parameters,
one set of outputs (rank 0). The same code path torchrun takes."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cpcl_kit.config import make_config
from cpcl_kit.engine import tblog


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cpcl_kit.engine.train import train

    cfg = make_config("smoke", iterations=4, sup_only_iters=0, rampup_iters=0, log_every=1,
                      checkpoint_every=2, device="cpu", eval_every=2, tb_image_every=2)
    res = train(cfg, out_dir=out, progress=False)
    last = res.history.iloc[-1]
    torch.save({"indicator": torch.tensor([last[f"ind_{c}"] for c in range(11)]),
                "params": [p.detach().clone() for n in res.nets for p in n.parameters()]},
               Path(result_dir) / f"rank{rank}.pt")
    import torch.distributed as dist

    assert not dist.is_initialized(), "train leaves the process group it joined"


def test_two_gloo_processes_agree_and_write_one_set_of_outputs(tmp_path):
    out, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(out), str(results)), nprocs=2, join=True)
    r0 = torch.load(results / "rank0.pt", weights_only=True)
    r1 = torch.load(results / "rank1.pt", weights_only=True)
    assert torch.allclose(r0["indicator"], r1["indicator"], atol=1e-6)
    assert abs(float(r0["indicator"].sum()) - 1) < 1e-3
    for p, q in zip(r0["params"], r1["params"]):
        assert torch.equal(p, q)
    # rank 0 alone evaluates during training and writes TensorBoard's one event file (when installed)
    events = [x.name for x in out.iterdir() if x.name.startswith("events.out.tfevents")]
    assert len(events) == (1 if tblog.available() else 0)
    assert sorted(x.name for x in out.iterdir() if x.name not in events) == \
        [".lock", "checkpoint.pt", "config.json", "history.csv", "metrics.json", "val_curve.csv"]
    assert [r["iteration"] for r in json.loads((out / "metrics.json").read_text())["val_curve"]] == [2, 4]


def test_torchrun_cli_runs_and_rank0_writes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "cpcl_kit", "train", "--method", "supervised", "--preset", "smoke",
           "--set", "iterations=4", "--set", "device=cpu", "--quiet", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "metrics.json").exists()
    assert proc.stdout.count("results in") == 1  # only rank 0 reports


def _spawn(fn, args, nprocs=2, timeout=240):
    """Start ``nprocs`` processes of ``fn(rank, *args)``; fail (not hang) if they outlive ``timeout``."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} processes hung (still running after {timeout} s)")


def _env(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _run_or_load_worker(rank, world, port, out, result_dir):
    _env(rank, world, port)
    from cpcl_kit.engine.train import run_or_load

    cfg = make_config("smoke", method="supervised", iterations=4, log_every=1, checkpoint_every=2, device="cpu")
    res = run_or_load(cfg, out, progress=False, stages=(2,))
    again = run_or_load(cfg, out, progress=False)  # finished: loaded on every rank, no training
    Path(result_dir, f"rank{rank}.txt").write_text(f"{len(res.history)} {again.metrics.get('iterations')}")


def test_run_or_load_under_two_processes_locks_on_rank0_only(tmp_path):
    """Every rank used to take the folder lock: rank 1 waited for rank 0's lock while rank 0 waited
    for rank 1 in DDP set-up. Stages pause and resume on both ranks (rank 0 writes, then both read)."""
    out, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    _spawn(_run_or_load_worker, (2, _free_port(), str(out), str(results)))
    assert (out / "metrics.json").exists()
    assert [(results / f"rank{r}.txt").read_text() for r in (0, 1)] == ["4 4", "4 4"]


def _diverging_worker(rank, world, port, out, result_dir):
    _env(rank, world, port)
    from cpcl_kit.engine.train import train, TrainingDiverged
    from cpcl_kit import registry

    plain = registry.method("supervised").step

    def step(nets, batch, cfg, lam, gen, all_reduce=None, **kw):
        out_ = plain(nets, batch, cfg, lam, gen, all_reduce, **kw)
        if rank == 1 and len(calls) == 1:  # rank 1 alone sees a non-finite loss, at iteration 2
            out_.loss = out_.loss * float("nan")
        calls.append(1)
        return out_

    calls = []
    registry.register_method("supervised", nets=1, unlabeled=False, replace=True)(step)
    cfg = make_config("smoke", method="supervised", iterations=6, log_every=3, checkpoint_every=6, device="cpu")
    try:
        train(cfg, out_dir=out, progress=False)
        result = "finished"
    except TrainingDiverged as e:
        result = str(e)
    Path(result_dir, f"rank{rank}.txt").write_text(result)


def test_a_loss_one_rank_sees_non_finite_stops_every_rank(tmp_path):
    out, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    _spawn(_diverging_worker, (2, _free_port(), str(out), str(results)))
    texts = [(results / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert all("NaN or infinite at iteration 2" in t for t in texts), texts


def test_backend_follows_the_device_not_the_machine():
    from cpcl_kit.engine.distributed import backend_for

    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
