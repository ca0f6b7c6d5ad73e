"""The checkpoint file format: what a checkpoint holds, read safely (``weights_only=True``) and
checked before use. ``runs`` decides where and when one is written (atomically)."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from ..config import load_config_dict
from ..errors import KitError
from ..nets.deeplab import build_nets

FORMAT = "cpcl-kit/1"
# What `make_state` writes, by type: `load` refuses a file without it instead of failing later.
_LAYOUT = {"config": dict, "iteration": int, "nets": list, "optimizers": list, "scaler": dict,
           "rng_cpu": torch.Tensor, "rng_cuda": list, "history": list}
# A weights file (a stage snapshot: ``weights_state``): the nets at one iteration, nothing to resume.
WEIGHTS_FORMAT = "cpcl-kit/weights-1"
_WEIGHTS_LAYOUT = {"config": dict, "iteration": int, "nets": list}


def make_state(cfg, iteration: int, nets, opts, scaler, history: list[dict],
               val_curve: list[dict] | None = None, world_size: int = 1) -> dict:
    """Everything an exact resume needs, as tensors and plain values only (so ``load`` can read it
    with ``weights_only=True``). ``runs.save_checkpoint`` writes it atomically. ``val_curve``: the
    evaluations made during training so far (``eval_every``), so a resumed run keeps them; a file
    without the key (older kits) holds none."""
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "iteration": iteration,
        "nets": [n.state_dict() for n in nets],
        "optimizers": [o.state_dict() for o in opts],
        "scaler": scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        # Training draws nothing from the CUDA generators (CutMix boxes and warps come from seeded
        # CPU generators; the nets have no dropout), so their state is not part of an exact resume.
        # The key stays, empty, for the file layout that older kit versions read and write.
        "rng_cuda": [],
        "history": history,
        "val_curve": list(val_curve or []),
        # The processes that trained it: another number of them would train another global batch.
        # A file without the key (older kits) was trained by one.
        "world_size": int(world_size),
    }


def weights_state(cfg, iteration: int, nets) -> dict:
    """The nets' weights at ``iteration`` with their config, on the CPU, without optimizer state:
    what a stage snapshot holds (``runs.save_snapshot`` writes it, ``load_nets`` reads it)."""
    return {"format": WEIGHTS_FORMAT, "config": cfg.to_dict(), "iteration": int(iteration),
            "nets": [{k: v.detach().cpu() for k, v in n.state_dict().items()} for n in nets]}


def load(path, weights: bool = False) -> dict:
    """Read a kit checkpoint safely (``weights_only=True``); a clear KitError for anything else.
    ``weights=True`` also accepts a weights file (``weights_state``; snapshots of older kits carry
    no format tag)."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"checkpoint: file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever an untrusted file makes torch.load raise is the file's fault
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text) if isinstance(e, pickle.UnpicklingError) else None
        if found:
            raise KitError(f"checkpoint: {path} holds pickled Python objects ({found.group(1)}), not only "
                           f"tensors and plain values; refused: checkpoints are read with weights_only=True "
                           f"and never unpickled") from None
        detail = re.search(r"Unsupported [^\n.]+", text)
        detail = detail.group(0) if detail else (text.strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise KitError(f"checkpoint: {path} is truncated or not a PyTorch file "
                       f"({type(e).__name__}: {detail})") from None
    formats = (FORMAT, WEIGHTS_FORMAT, None) if weights else (FORMAT,)
    untagged = isinstance(state, dict) and state.get("format") is None
    if untagged and not all(isinstance(state.get(k), kind) for k, kind in _WEIGHTS_LAYOUT.items()):
        state = None  # neither tagged nor shaped as the kit's files: a foreign file
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise KitError(f"checkpoint: {path} is not a cpcl-kit checkpoint (expected a file written by "
                       f"`python -m cpcl_kit train`, format {FORMAT})")
    layout = _LAYOUT if state.get("format") == FORMAT else _WEIGHTS_LAYOUT
    bad = [k for k, kind in layout.items() if not isinstance(state.get(k), kind)]
    if bad:
        raise KitError(f"checkpoint: {path} is damaged or foreign: missing or malformed {', '.join(bad)}")
    _check_finite(state, path)
    return state


def _check_finite(state: dict, path: Path) -> None:
    """Refuse weights (and optimizer states) that hold NaN or inf: a net with them predicts one
    class or garbage everywhere, and a resumed run goes on from them. Training never saves such
    weights (it stops as diverged first), so these come from a damaged or edited file."""
    for i, sd in enumerate(state["nets"], start=1):
        for key, t in (sd.items() if isinstance(sd, dict) else ()):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise KitError(f"checkpoint: {path} holds non-finite weights (NaN or inf in net {i}'s {key}); "
                               f"refused: a damaged file, or weights of a run that diverged (retrain, or "
                               f"resume from a checkpoint saved before)")
    for i, sd in enumerate(state.get("optimizers") or [], start=1):
        for t in _tensors(sd):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise KitError(f"checkpoint: {path} holds a non-finite optimizer state (NaN or inf in "
                               f"optimizer {i}); refused: a run resumed from it would go on from garbage")


def _tensors(obj):
    """Every tensor inside nested dicts and lists (an optimizer's state dict)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def restore(state: dict, nets, opts, scaler) -> tuple[int, list[dict]]:
    """Load a checkpoint's weights and optimizer states in place; returns (iteration, history)."""
    if len(state["nets"]) != len(nets) or len(state["optimizers"]) != len(opts):
        raise KitError(f"checkpoint holds {len(state['nets'])} nets and {len(state['optimizers'])} "
                       f"optimizers, the run needs {len(nets)}")
    _load_nets(nets, state["nets"])
    try:
        for opt, sd in zip(opts, state["optimizers"]):
            opt.load_state_dict(sd)
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise KitError(f"checkpoint: optimizer or RNG state does not fit this run "
                       f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None
    # A checkpoint from an older version may hold one CUDA RNG state per GPU of the machine that
    # wrote it; it is not restored (see make_state), so a machine with fewer GPUs resumes it too.
    return int(state["iteration"]), list(state["history"])


def load_nets(path, device="cpu"):
    """(config, nets in eval mode) from a checkpoint or a weights file (``weights_state``), for
    evaluation, prediction and the notebooks."""
    state = load(path, weights=True)
    return state_config(state, path), state_nets(state, path, device)


def state_config(state: dict, path=None):
    """The Config a loaded checkpoint or weights file was written with; its backbone weights are None
    (the weights come from the file)."""
    try:
        cfg = load_config_dict(state["config"])
    except TypeError as e:  # a field of the wrong kind; KitErrors from validation pass through
        raise KitError(f"checkpoint: {path} holds a malformed config ({e})") from None
    cfg.backbone_weights = None
    return cfg


def state_nets(state: dict, path=None, device="cpu") -> list:
    """The nets of a loaded checkpoint or weights file, built from its config, in eval mode on device."""
    cfg = state_config(state, path)
    nets = build_nets(cfg)
    if len(state["nets"]) != len(nets):
        raise KitError(f"checkpoint: {path} holds {len(state['nets'])} nets, method "
                       f"{cfg.method!r} needs {len(nets)}")
    _load_nets(nets, state["nets"], path)
    for net in nets:
        net.to(device).eval()
    return nets


def _load_nets(nets, state_dicts, path=None) -> None:
    """Weights into nets, strictly; a KitError (not a traceback) when they do not fit."""
    where = f" {path}" if path else ""
    for i, (net, sd) in enumerate(zip(nets, state_dicts), start=1):
        try:
            net.load_state_dict(sd)
        except (RuntimeError, TypeError, AttributeError) as e:
            detail = " ".join(str(e).split())[:200]
            raise KitError(f"checkpoint{where}: weights of net {i} do not fit the model its config "
                           f"describes ({detail})") from None
