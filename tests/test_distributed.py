"""Two gloo processes on loopback train like one run: shared indicator, identical parameters,
one set of outputs (rank 0). The same code path torchrun takes."""

import json
import math
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


def test_torchrun_cli_runs_and_rank0_writes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "cpcl_kit", "train", "--method", "supervised", "--preset", "smoke",
           "--set", "iterations=4", "--set", "device=cpu", "--quiet", "--out", str(out)]
    (tmp_path / "tmp").mkdir()  # torchrun's own log folders (torchelastic_*) go here, not to the system's
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path / "tmp"))
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
    import torch.distributed as dist

    assert not dist.is_initialized(), "run_or_load leaves the process group it joined"
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


# ------------------------------------------------------------------------------------------------
# one global batch: sharded evaluation, averaged logs, world size part of the run, sync_bn on CPU


def _global_batch_worker(rank, world, port, root, result_dir):
    _env(rank, world, port)
    from cpcl_kit.engine.distributed import process_group

    # One process group for the whole worker, as run_or_load holds one: every train() below joins
    # it (a group made and left per call would rebind the same port at each call).
    with process_group(torch.device("cpu")):
        out = _global_batch_phases(rank, world, Path(root))
    torch.save(out, Path(result_dir) / f"rank{rank}.pt")


def _global_batch_phases(rank, world, root: Path) -> dict:
    from cpcl_kit.data.build import build_data
    from cpcl_kit.engine.distributed import mean_over_ranks, with_rank0_buffers
    from cpcl_kit.engine.evaluate import evaluate
    from cpcl_kit.engine.train import train
    from cpcl_kit.errors import KitError

    out = {}
    # the mean over ranks leaves NaN entries out
    mine = [1.0, float("nan"), float("nan")] if rank == 0 else [3.0, 5.0, float("nan")]
    out["mean"] = mean_over_ranks(torch.tensor(mine)).tolist()
    cfg = make_config("smoke", iterations=4, sup_only_iters=0, rampup_iters=0, log_every=1, checkpoint_every=2,
                      device="cpu", eval_every=2, tb_image_every=2, n_val_scenes=7)
    try:  # SyncBatchNorm on CPU processes: refused on every rank, in one line
        train(make_config("smoke", device="cpu", sync_bn=True, iterations=2), out_dir=root / "sync", progress=False)
        out["sync_bn"] = "trained"
    except KitError as e:
        out["sync_bn"] = str(e)
    whole = train(cfg, out_dir=root / "whole", progress=False)
    out["params"] = [p.detach().clone() for n in whole.nets for p in n.parameters()]
    out["metrics"] = {k: whole.metrics[k] for k in ("miou", "pixel_acc", "per_class_iou")}
    out["history"] = whole.history.drop(columns="seconds").to_dict("list")
    # the sharded evaluation equals this process evaluating the whole set alone (one image per batch:
    # the batches' make-up can move a near-tie pixel of these barely trained nets)
    val = build_data(cfg).val
    net = with_rank0_buffers(whole.nets)[0]  # the model rank 0 saves: its BatchNorm statistics
    sharded = evaluate(net, val, cfg.num_classes, batch_size=1, progress=False, shard=(rank, world))
    alone = evaluate(net, val, cfg.num_classes, batch_size=1, progress=False)
    out["alone"], out["sharded"] = ({k: r[k] for k in ("miou", "pixel_acc", "per_class_iou")} for r in (alone, sharded))
    # paused after iteration 2 (checkpoint written), then resumed: the same run
    train(cfg, out_dir=root / "paused", progress=False, stop_at=2)
    again = train(cfg, out_dir=root / "paused", progress=False, resume=True)
    out["resumed"] = [p.detach().clone() for n in again.nets for p in n.parameters()]
    train(cfg, out_dir=root / "half", progress=False, stop_at=2)
    return out


def test_two_processes_train_one_global_batch(tmp_path):
    root, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    _spawn(_global_batch_worker, (2, _free_port(), str(root), str(results)), timeout=400)
    r0, r1 = (torch.load(results / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["mean"][:2] == r1["mean"][:2] == [2.0, 5.0] and math.isnan(r0["mean"][2]) and math.isnan(r1["mean"][2])
    assert r0["sync_bn"] == r1["sync_bn"]
    assert r0["sync_bn"].startswith("sync_bn: SyncBatchNorm runs on CUDA processes only")
    for p, q, a, b in zip(r0["params"], r1["params"], r0["resumed"], r1["resumed"]):
        assert torch.equal(p, q) and torch.equal(p, a) and torch.equal(a, b)  # both ranks; a resume changes nothing
    # every process reports the whole validation set's numbers, equal to one process's evaluation
    assert r0["metrics"] == r1["metrics"]
    assert r0["sharded"] == r1["sharded"] == r0["alone"] == r1["alone"]
    # the logged numbers are the means over both shards, the same on both ranks
    import pandas as pd

    pd.testing.assert_frame_equal(pd.DataFrame(r0["history"]), pd.DataFrame(r1["history"]))
    assert len(r0["history"]["loss"]) == 4
    assert abs(sum(r0["history"][f"ind_{c}"][-1] for c in range(11)) - 1) < 1e-3  # the global indicator
    # rank 0 alone writes the run's files, and TensorBoard's one event file (when installed)
    out = root / "whole"
    events = [x.name for x in out.iterdir() if x.name.startswith("events.out.tfevents")]
    assert len(events) == (1 if tblog.available() else 0)
    assert sorted(x.name for x in out.iterdir() if x.name not in events) == \
        [".lock", "checkpoint.pt", "config.json", "history.csv", "metrics.json", "val_curve.csv"]
    assert [r["iteration"] for r in json.loads((out / "metrics.json").read_text())["val_curve"]] == [2, 4]

    # the number of processes is part of the run: one process does not continue or reuse theirs
    from cpcl_kit.engine.train import run_or_load, train
    from cpcl_kit.errors import KitError

    cfg = make_config("smoke", iterations=4, sup_only_iters=0, rampup_iters=0, log_every=1, checkpoint_every=2,
                      device="cpu", eval_every=2, tb_image_every=0, n_val_scenes=7)
    with pytest.raises(KitError, match=r"checkpoint\.pt: this run was trained by 2 process\(es\), and 1 would"):
        train(cfg, out_dir=root / "half", resume=True, progress=False)
    with pytest.raises(KitError, match=r"metrics\.json: this run was trained by 2 process\(es\)"):
        run_or_load(cfg, root / "whole", progress=False)


def test_cutmix_boxes_and_warps_are_drawn_for_the_global_batch():
    """Process r of W takes slots r, W + r, ... of the global batch (the loader's sharding): its
    boxes and warps are those slots' draws of one process training the whole batch."""
    from types import SimpleNamespace

    from cpcl_kit.method.variants import cutmix, warp_view

    u = torch.randn(4, 3, 16, 16)
    one = cutmix(SimpleNamespace(u0=u, u1=-u, u0_mask=None, shard=(0, 1)), torch.Generator().manual_seed(3), 3)[0]
    parts = [cutmix(SimpleNamespace(u0=u[r::2], u1=-u[r::2], u0_mask=None, shard=(r, 2)),
                    torch.Generator().manual_seed(3), 3)[0] for r in (0, 1)]
    assert torch.equal(parts[0], one[0::2]) and torch.equal(parts[1], one[1::2])
    cfg = make_config("smoke", student_aug="affine")
    view = warp_view(cfg, torch.Generator().manual_seed(3), u, [], None)[0]
    shards = [warp_view(cfg, torch.Generator().manual_seed(3), u[r::2], [], None, (r, 2))[0] for r in (0, 1)]
    assert torch.equal(shards[0], view[0::2]) and torch.equal(shards[1], view[1::2])


def test_figures_run_on_plain_batchnorm_copies_of_sync_nets():
    """The pseudo-label figures (TensorBoard images, rank 0 alone) run the teachers in train mode on
    copies whose SyncBatchNorm layers are plain again: no collective on one rank only. (On the CPU a
    SyncBatchNorm forward raises, so reaching one fails this test.)"""
    from cpcl_kit.method.scenes import pseudo_labels_on_scenes
    from cpcl_kit.nets.deeplab import build_nets

    cfg = make_config("smoke", backbone_weights="none", crop=32, head_channels=8, teacher_bn="train", cutmix_boxes=3)
    nets = build_nets(cfg)
    g = torch.Generator().manual_seed(0)
    scenes = [(torch.randn(3, 32, 32, generator=g), torch.randint(0, 11, (32, 32), generator=g)) for _ in range(8)]
    plain = pseudo_labels_on_scenes(nets, scenes, cfg, n=2)[2]
    synced = [torch.nn.SyncBatchNorm.convert_sync_batchnorm(n) for n in nets]
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced[0].modules())
    labels = pseudo_labels_on_scenes(synced, scenes, cfg, n=2)[2]
    assert torch.equal(labels.union, plain.union) and torch.equal(labels.w_union, plain.w_union)
