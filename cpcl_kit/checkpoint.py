"""Checkpoints: written atomically, read with ``weights_only=True``, checked before use."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import KitError

CHECKPOINT = "checkpoint.pt"
FORMAT = "cpcl-kit/1"
# Settings that must match for a resumed run to continue the same experiment.
_MUST_MATCH = ("method", "dataset", "backbone", "output_stride", "head_channels", "seed", "labeled",
               "batch_size", "unlabeled_batch_size", "iterations", "optimizer", "lr")


def save(path, cfg, iteration: int, nets, opts, scaler, history: list[dict]) -> Path:
    """Write both nets, optimizers, scaler, iteration, RNG states and history to ``path`` atomically:
    a temp file in the same folder, fsynced, then renamed over the old one, so a kill at any moment
    leaves the previous complete checkpoint."""
    path = Path(path)
    state = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "iteration": iteration,
        "nets": [n.state_dict() for n in nets],
        "optimizers": [o.state_dict() for o in opts],
        "scaler": scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": history,
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(path) -> dict:
    """Read a kit checkpoint safely (``weights_only=True``); a clear KitError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"checkpoint: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise KitError(f"checkpoint: {path} holds objects that are not plain tensors and values "
                       f"(refused by weights_only loading: {str(e).splitlines()[0][:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise KitError(f"checkpoint: {path} is truncated or not a PyTorch file "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise KitError(f"checkpoint: {path} is not a cpcl-kit checkpoint (expected format {FORMAT})")
    return state


def check_compatible(state: dict, cfg, path) -> None:
    saved = state["config"]
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg, k)!r}"
            for k in _MUST_MATCH if saved.get(k) != getattr(cfg, k)]
    if diff:
        raise KitError(f"--resume: {path} was written by a different run ({'; '.join(diff)})")


def restore(state: dict, nets, opts, scaler) -> tuple[int, list[dict]]:
    """Load a checkpoint's weights and optimizer states in place; returns (iteration, history)."""
    if len(state["nets"]) != len(nets):
        raise KitError(f"checkpoint holds {len(state['nets'])} nets, the run needs {len(nets)}")
    for net, sd in zip(nets, state["nets"]):
        net.load_state_dict(sd)
    for opt, sd in zip(opts, state["optimizers"]):
        opt.load_state_dict(sd)
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["iteration"]), list(state["history"])


def load_nets(path, device="cpu"):
    """(config, nets in eval mode) from a checkpoint, for evaluation and the notebooks."""
    from .config import load_config_dict
    from .train import build_nets

    state = load(path)
    cfg = load_config_dict(state["config"])
    cfg.backbone_weights = None  # the weights come from the checkpoint
    nets = build_nets(cfg)
    for net, sd in zip(nets, state["nets"]):
        net.load_state_dict(sd)
        net.to(device).eval()
    return cfg, nets
