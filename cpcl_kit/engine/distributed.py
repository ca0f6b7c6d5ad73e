"""Multi-process training with PyTorch's own engine: ``torchrun --nproc_per_node N -m cpcl_kit train``.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is a no-op and the
same command runs on one device.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import KitError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and metrics."""
        return self.rank == 0


# How long a collective waits for the other processes before the run stops with an error: longer
# than any one step or checkpoint write, short enough that a rank that died ends the others today.
TIMEOUT = timedelta(minutes=30)


def env_local_rank() -> int:
    """This process's GPU slot on its machine (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


# The process-group backend, when set ("gloo" or "nccl"): gloo with CUDA tensors lets two processes
# share one GPU (NCCL refuses that), which is how a one-GPU machine checks the multi-process path.
BACKEND_ENV = "CPCL_KIT_DIST_BACKEND"


def backend_for(device: torch.device) -> str:
    """NCCL for a CUDA run, gloo for a CPU one: chosen by the run's device, since a CPU run on a
    machine that has CUDA still needs a backend that can move CPU tensors (NCCL cannot);
    ``$CPCL_KIT_DIST_BACKEND`` chooses otherwise."""
    chosen = os.environ.get(BACKEND_ENV)
    if chosen:
        if chosen not in ("gloo", "nccl"):
            raise KitError(f"${BACKEND_ENV}: expected gloo or nccl, got {chosen!r}")
        return chosen
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes, once per process (backend from ``device``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        device = device if device is not None else torch.device("cpu")
        if device.type == "cuda":  # NCCL binds each process's communicator to its current GPU
            torch.cuda.set_device(device)
        dist.init_process_group(backend_for(device), timeout=TIMEOUT)
    return DistInfo(dist.get_rank(), dist.get_world_size(), env_local_rank())


@contextmanager
def process_group(device: torch.device | None = None):
    """``with process_group(device) as info:`` joins torchrun's group for the block and leaves it
    at the end when this block joined it (a nested block, or a caller's group, is left alone)."""
    owned = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized())
    info = init_from_env(device)
    try:
        yield info
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place (no-op on one process); returns ``t``."""
    if _active():
        dist.all_reduce(t)
    return t


def shard() -> tuple[int, int]:
    """(rank, world size) of this process in the active process group; (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over processes, NaN entries left out of it (NaN where every process has
    NaN); ``values`` itself on one process. A host sync: for logging intervals, not for steps."""
    if not _active():
        return values
    known = ~torch.isnan(values)
    both = torch.stack([torch.where(known, values, torch.zeros_like(values)), known.to(values.dtype)])
    both = both.to(_comm_device())
    dist.all_reduce(both)
    return (both[0] / both[1]).to(values.device)


def with_rank0_buffers(nets: list) -> list:
    """The nets as rank 0 holds them, on every process: copies whose buffers (BatchNorm's running
    statistics, which each process keeps for itself without SyncBatchNorm) are rank 0's, the ones
    its checkpoint saves. A sharded evaluation then scores one model, the one the run keeps. One
    process: the nets themselves."""
    if not _active():
        return nets
    copies = [copy.deepcopy(net) for net in nets]
    for net in copies:
        for buf in net.buffers():
            moved = buf.to(_comm_device())
            dist.broadcast(moved, src=0)
            buf.copy_(moved)
    return copies


def first_bad_iteration(bad_it: torch.Tensor) -> int:
    """The earliest non-finite iteration any process saw (-1: none), the same on every rank.

    ``bad_it`` is this process's own (-1 when none). Every rank must decide together: a rank that
    raised alone would leave the others waiting in the next collective until NCCL's timeout."""
    if not _active():
        return int(bad_it)
    none = torch.iinfo(torch.int64).max
    t = torch.where(bad_it >= 0, bad_it, none).to(_comm_device(), torch.int64).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return -1 if int(t) == none else int(t)


def all_ok(ok: bool) -> bool:
    """True on every rank when ``ok`` is True on every rank (one process: ``ok``)."""
    if not _active():
        return ok
    t = torch.tensor([1 if ok else 0], dtype=torch.int64).to(_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(int(t))


def barrier() -> None:
    if _active():
        if dist.get_backend() == "nccl":  # name the GPU: NCCL would otherwise guess it from the rank
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
