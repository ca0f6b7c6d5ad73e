"""What updates the nets of one run: the nets, their optimizers, the lr schedule and λ ramp, and
one optimisation step (``Trainer.step``) around a method's step function (``method.steps``)."""

from __future__ import annotations

import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config
from ..errors import KitError
from ..method.steps import StepOut
from ..method.variants import each
from ..nets.deeplab import build_nets
from ..nets.pretrain import resolve_backbone_weights
from .device import amp_dtype
from .distributed import DistInfo


def nets_for(cfg: Config) -> list:
    """``nets.deeplab.build_nets`` with the named backbone weights resolved: ``backbone_weights="digits"``
    is the kit's pretrained digit backbone (``pretrain.py``), trained and cached on first use."""
    return build_nets(dataclasses.replace(cfg, backbone_weights=resolve_backbone_weights(cfg)))


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; biases and BatchNorm parameters get none."""
    decay, no_decay = [], []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            no_decay += [p for p in (m.weight, m.bias) if p is not None]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(net: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    groups = param_groups(net, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    # The fused kernel updates every parameter in one pass (on a CPU a fifth of the time of the
    # per-tensor loop in a CPU preset's step); same update rule, its own float order.
    return torch.optim.Adam(groups, lr=cfg.lr, fused=True)


def lr_at(it: int, cfg: Config) -> float:
    """Linear warm-up for ``warmup_iters``, then poly decay base·(1 − it/T)^power per iteration."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    return cfg.lr * (1 - it / cfg.iterations) ** cfg.poly_power


def unsup_weight_at(it: int, cfg: Config) -> float:
    """λ: 0 during the supervised-only start, then a linear ramp to ``unsup_weight`` (paper: λ from 0)."""
    if it < cfg.sup_only_iters:
        return 0.0
    if cfg.rampup_iters > 0:
        return cfg.unsup_weight * min(1.0, (it - cfg.sup_only_iters + 1) / cfg.rampup_iters)
    return cfg.unsup_weight


def _one_torch_thread() -> None:
    # Per-thread settings: a new thread has its own OpenMP team size and its own floating-point
    # control word, so the CPU loop's denormal flushing (setup_device) is set here too.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


@functools.cache
def _net_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(2, thread_name_prefix="cpcl-net", initializer=_one_torch_thread)


def on_threads(fn, items) -> list:
    """``method.variants.each`` over two threads of one torch thread each: the two nets of a step
    work at once, each net's arithmetic as on one thread."""
    return list(_net_pool().map(fn, items))


@dataclass
class Trainer:
    """The nets of one run and what updates them: optimizers, grad scaler and autocast dtype.

    ``nets`` are the plain modules (checkpoints, evaluation); ``models`` what the step calls (the
    same nets, or their DistributedDataParallel wrappers under torchrun)."""

    cfg: Config
    device: torch.device
    nets: list
    opts: list
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    models: list | None = None
    par: object = each  # how the step maps work over the nets: in turn, or ``on_threads``
    world_size: int = 1  # processes training together (``wrap_ddp``)

    @classmethod
    def create(cls, cfg: Config, device: torch.device) -> "Trainer":
        nets = nets_for(cfg)
        for net in nets:  # on the device before any optimizer state is restored into them
            net.to(device).train()
            if cfg.channels_last:
                net.to(memory_format=torch.channels_last)
        dtype = amp_dtype(device, cfg.amp)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        # Two nets on a CPU in fp32: one thread each. (A GPU runs its kernels asynchronously already,
        # and autocast is per thread.)
        par = on_threads if cfg.net_threads and len(nets) == 2 and device.type == "cpu" and dtype is None else each
        return cls(cfg, device, nets, [make_optimizer(n, cfg) for n in nets], scaler, dtype, nets, par)

    def wrap_ddp(self, info: DistInfo) -> None:
        """DistributedDataParallel copies of the nets for the step (the raw nets stay for checkpoints
        and evaluation). Each net is called several times per step (labeled, teachers, student)
        before one backward; that is fine for DDP without find_unused_parameters, since every
        parameter is used once in the graph that backward walks.

        ``broadcast_buffers=False``: by default DDP copies rank 0's BatchNorm statistics into every
        rank in place at each of those calls, and a later call then overwrites statistics that an
        earlier call's graph saved for backward (torch 2.11 stops with "modified by an inplace
        operation" on rank 1). Each rank keeps its own running statistics instead (SyncBatchNorm,
        ``sync_bn=true``, shares the batch statistics themselves); rank 0's are the ones saved.

        SyncBatchNorm computes on CUDA only: several CPU processes with ``sync_bn`` are refused, on
        every rank alike, before any collective."""
        self.world_size = info.world_size
        if not info.enabled:
            return
        if self.cfg.sync_bn and self.device.type != "cuda":
            raise KitError(f"sync_bn: SyncBatchNorm runs on CUDA processes only, and these {info.world_size} "
                           f"processes train on the {self.device.type}; pass --set sync_bn=false (each process "
                           f"then normalises over its own images)")
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.par = each  # DDP's collectives run in the order of the calls, from one thread

        if self.cfg.sync_bn:
            self.nets[:] = [nn.SyncBatchNorm.convert_sync_batchnorm(n) for n in self.nets]
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.models = [DDP(n, device_ids=ids, broadcast_buffers=False) for n in self.nets]

    def step(self, step_fn, batch, it: int, lam: float | None = None, all_reduce=None) -> StepOut:
        """Iteration ``it``: set the lr (and λ, unless given), run ``step_fn`` under autocast,
        backward, one optimizer step per net. The CutMix boxes of iteration ``it`` come from a
        generator seeded by (seed, it), so a resumed run draws the same ones."""
        lr = lr_at(it, self.cfg)
        lam = unsup_weight_at(it, self.cfg) if lam is None else lam
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + it)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = step_fn(self.models, batch, self.cfg, lam, gen, all_reduce=all_reduce, par=self.par)
        if self.par is each or out.per_net is None:
            self.scaler.scale(out.loss).backward()
            for opt in self.opts:
                self.scaler.step(opt)
        else:  # each net's backward and update on its own thread (no scaler: fp32 only)
            def update(k):
                out.per_net[k].backward()
                self.opts[k].step()

            self.par(update, range(len(self.opts)))
        self.scaler.update()
        return out

    def weights_finite(self) -> bool:
        return all(torch.isfinite(p).all() for n in self.nets for p in n.parameters())
