"""Two gloo processes on loopback train like one run: shared indicator, identical parameters,
one set of outputs (rank 0). The same code path torchrun takes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from cpcl_kit.config import make_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cpcl_kit.train import train

    cfg = make_config("smoke", iterations=4, sup_only_iters=0, rampup_iters=0, log_every=1,
                      checkpoint_every=2, device="cpu")
    res = train(cfg, out_dir=out, progress=False)
    last = res.history.iloc[-1]
    torch.save({"indicator": torch.tensor([last[f"ind_{c}"] for c in range(11)]),
                "params": [p.detach().clone() for n in res.nets for p in n.parameters()]},
               Path(result_dir) / f"rank{rank}.pt")
    import torch.distributed as dist

    dist.destroy_process_group()


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
    assert sorted(x.name for x in out.iterdir()) == [".lock", "checkpoint.pt", "config.json", "history.csv", "metrics.json"]


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
