"""CPCL pseudo-supervision: CutMix box masks, intersection/union pseudo-labels, weighted CE.

Everything here is a pure function of tensors. The per-iteration functions (``mix``,
``pseudo_supervision``, ``weighted_ce``) run on any device, compute in fp32 even for half-precision
logits and never synchronise with the host (no ``.item()``, no branching on tensor values), so they
can sit in a CUDA training loop without stalling it. See docs/method.md §3–§5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX, LOSS_NORMALISERS, UNION_RULES, WEIGHT_SCOPES
from ..errors import KitError

__all__ = [
    "PseudoLabels",
    "check_labels",
    "check_num_classes",
    "check_same_shape",
    "UNION_RULES",
    "agreement",
    "class_disagreement",
    "confusion_between",
    "cutmix_box_masks",
    "mix",
    "pseudo_supervision",
    "weighted_ce",
]



# --------------------------------------------------------------------------------------------
# argument checks (shapes and dtypes only: metadata, so no host synchronisation); the metrics use
# them too


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise KitError(f"num_classes: expected an int >= 1, got {num_classes!r}")
    return num_classes


def check_labels(name: str, y: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        got = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise KitError(f"{name}: expected an integer label tensor, got {got}")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise KitError(
            f"{name_a}/{name_b}: expected equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _count(index: torch.Tensor, n: int) -> torch.Tensor:
    """Histogram of ``index`` (int64, values in [0, n)) into ``n`` bins, as int64 on its device.

    Same result as ``torch.bincount(index, minlength=n)``, but bincount on CUDA reads the input's
    min and max back to the host to size its output; a scatter-add into a fixed-size buffer
    does not.
    """
    ones = torch.ones((), dtype=torch.long, device=index.device).expand_as(index)
    return torch.zeros(n, dtype=torch.long, device=index.device).scatter_add_(0, index, ones)


# --------------------------------------------------------------------------------------------
# class-wise disagreement indicator (section 2, step 5)


def confusion_between(y1: torch.Tensor, y2: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel counts N[i, j] = #{y1 == i and y2 == j}: LongTensor [C, C] on the labels' device.

    y1, y2: integer label maps of any equal shape (e.g. [B, H, W]) with values in [0, C); values
    are not checked (that would need a host round trip) -- argmax labels always satisfy it.
    No +1 on the diagonal here (see ``class_disagreement``).
    """
    c = check_num_classes(num_classes)
    check_labels("y1", y1)
    check_labels("y2", y2)
    check_same_shape("y1", y1, "y2", y2)
    index = y1.reshape(-1).long() * c + y2.reshape(-1).long()
    return _count(index, c * c).view(c, c)


def _float_for(device: torch.device) -> torch.dtype:
    # float64 like the official numpy code; MPS has no float64, fall back to float32 there.
    return torch.float32 if device.type == "mps" else torch.float64


def class_disagreement(y1: torch.Tensor, y2: torch.Tensor, num_classes: int,
                       all_reduce=None) -> torch.Tensor:
    """Normalised class-wise disagreement indicator Ĩ: Tensor [C], float64 (float32 on MPS).

    y1, y2: label maps of equal shape ([B, H, W]) from network 1 (rows of N) and network 2
    (columns), values in [0, C). N is their batch confusion matrix with +1 on every diagonal entry
    (the official code appends the label list 0..C-1 to both vectors), so no class divides by zero.
    With row sums R, column sums K:  I_c = (K_c - N_cc)/K_c + (R_c - N_cc)/R_c  (in [0, 2]; 0 for a
    class neither network predicts) and Ĩ = I / (sum(I) + 1e-6).
    ``all_reduce``: optional in-place sum of the [C, C] counts over processes (multi-GPU), so Ĩ is
    the global batch's, exactly as on one device.
    """
    counts = confusion_between(y1, y2, num_classes)
    if all_reduce is not None:
        all_reduce(counts)
    dtype = _float_for(counts.device)
    n = counts.to(dtype) + torch.eye(num_classes, dtype=dtype, device=counts.device)
    diag = n.diagonal()
    rows = n.sum(dim=1)  # R_c: pixels net 1 labels c (+1)
    cols = n.sum(dim=0)  # K_c: pixels net 2 labels c (+1)
    ind = (cols - diag) / cols + (rows - diag) / rows
    return ind / (ind.sum() + 1e-6)


def agreement(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """Fraction of positions where y1 == y2: 0-dim float32 tensor on the labels' device."""
    check_same_shape("y1", y1, "y2", y2)
    return (y1 == y2).float().mean()


# --------------------------------------------------------------------------------------------
# CutMix (section 5)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    )
    if not ok:
        raise KitError(f"size: expected a positive int or (H, W) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def cutmix_box_masks(
    n: int,
    size,
    n_boxes: int = 3,
    area: tuple[float, float] = (0.25, 0.5),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random CutMix box masks, float32 [n, 1, H, W] of exact 0/1 on ``device`` (default the CPU;
    1 = take image b).

    Per sample and box: area proportion a ~ U(area); height proportion exp(U(0,1)·ln a) and width
    proportion a / height proportion, both scaled by sqrt(1/n_boxes); box size round(prop·(H, W));
    top-left round((dims - box)·U(0,1)) so every box lies inside. Starting from zeros, each box
    flips (XORs) its region, so overlaps cancel. All randomness comes from ``generator`` (a CPU
    ``torch.Generator``; the global RNG when None), so a seeded generator reproduces the masks.
    The draws and box corners are computed on the CPU (a few numbers); the mask itself is built on
    ``device`` from the corners, so only those numbers travel, asynchronously, and the mask is the
    same on every device (integer comparisons).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise KitError(f"n: expected an int >= 0, got {n!r}")
    h, w = _check_size(size)
    if isinstance(n_boxes, bool) or not isinstance(n_boxes, int) or n_boxes < 1:
        raise KitError(f"n_boxes: expected an int >= 1, got {n_boxes!r}")
    try:
        lo, hi = (float(v) for v in area)
    except (TypeError, ValueError):
        raise KitError(f"area: expected a pair (low, high) of floats, got {area!r}") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise KitError(f"area: expected 0 < low <= high <= 1, got {area!r}")

    # float64 draws, rounded half-to-even like numpy's np.round in the official generator.
    draws = torch.rand((4, n, n_boxes), generator=generator, dtype=torch.float64)
    a = lo + (hi - lo) * draws[0]
    h_prop = torch.exp(draws[1] * torch.log(a))
    w_prop = a / h_prop
    scale = math.sqrt(1.0 / n_boxes)
    dims = torch.tensor([h, w], dtype=torch.float64)
    box = torch.round(torch.stack([h_prop, w_prop], dim=-1) * scale * dims)  # [n, b, 2]
    top_left = torch.round((dims - box) * draws[2:].permute(1, 2, 0))  # [n, b, 2]
    start = top_left.long()
    stop = start + box.long()
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu":
        start, stop = start.to(device, non_blocking=True), stop.to(device, non_blocking=True)

    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_rows = (rows >= start[..., 0, None]) & (rows < stop[..., 0, None])  # [n, b, H]
    in_cols = (cols >= start[..., 1, None]) & (cols < stop[..., 1, None])  # [n, b, W]
    inside = in_rows[..., :, None] & in_cols[..., None, :]  # [n, b, H, W]
    # XOR over boxes = parity of how many boxes cover a pixel.
    parity = inside.sum(dim=1, dtype=torch.int32) % 2
    return parity.to(torch.float32)[:, None]


def mix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CutMix two batches with a box mask [B, 1, H, W] (1 = take ``b``).

    Float tensors [B, K, H, W] (images, logits): (1 - M)·a + M·b in a's dtype, M broadcast over
    K.
    Integer label maps [B, H, W]: ``torch.where(M[:, 0] != 0, b, a)``. The mask is moved to a's
    device.
    """
    check_same_shape("a", a, "b", b)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise KitError(f"mask: expected shape [B, 1, H, W], got {tuple(mask.shape)}")
    mask = mask.to(a.device)
    if a.dim() == 3:
        if mask.shape[0] != a.shape[0] or mask.shape[2:] != a.shape[1:]:
            raise KitError(
                f"mask: expected [B, 1, H, W] = {[a.shape[0], 1, *a.shape[1:]]} for label maps "
                f"of shape {tuple(a.shape)}, got {tuple(mask.shape)}"
            )
        return torch.where(mask[:, 0].bool(), b, a)
    if a.dim() != 4:
        raise KitError(f"a: expected [B, K, H, W] or label maps [B, H, W], got {tuple(a.shape)}")
    if mask.shape[0] != a.shape[0] or mask.shape[2:] != a.shape[2:]:
        raise KitError(
            f"mask: expected [B, 1, H, W] = {[a.shape[0], 1, *a.shape[2:]]} for tensors "
            f"of shape {tuple(a.shape)}, got {tuple(mask.shape)}"
        )
    if not a.dtype.is_floating_point:
        return torch.where(mask.bool(), b, a)
    m = mask.to(a.dtype)
    return (1 - m) * a + m * b


# --------------------------------------------------------------------------------------------
# pseudo-labels and weights (sections 2 and 3)


@dataclass
class PseudoLabels:
    """Teacher pseudo-supervision for one CutMix batch (all [B, H, W] unless noted).

    y1, y2: argmax labels of teacher 1 / 2 (long). conf1, conf2: max softmax (float32).
    agree: y1 == y2 (bool). indicator: Ĩ, [C] (see ``class_disagreement``).
    inter: y1 where agree else ignore_index -- target of network 1 (conservative).
    union: y1 where agree, else the label chosen by the union rule -- target of network 2.
    w_inter, w_union: float32 per-pixel loss weights (all ones when reweight=False).
    """

    y1: torch.Tensor
    y2: torch.Tensor
    conf1: torch.Tensor
    conf2: torch.Tensor
    agree: torch.Tensor
    indicator: torch.Tensor
    inter: torch.Tensor
    union: torch.Tensor
    w_inter: torch.Tensor
    w_union: torch.Tensor


def pseudo_supervision(
    teacher1: torch.Tensor,
    teacher2: torch.Tensor,
    *,
    union_rule: str = "disagreement",
    reweight: bool = True,
    weight_scope: str = "pixel",
    ignore_index: int = IGNORE_INDEX,
    all_reduce=None,
) -> PseudoLabels:
    """Intersection/union pseudo-labels and confidence weights from two teachers' logits.

    teacher1, teacher2: [B, C, H, W] logits (already CutMix-mixed), any float dtype; detached and
    computed in fp32. Union on disagreement: ``"disagreement"`` (default, official) takes y1 if
    Ĩ[y1] > Ĩ[y2] strictly, else y2; ``"confidence"`` (ablation) takes y1 if conf1 > conf2, else
    y2 -- so ties go to network 2 in both rules. Weights: w_inter = (conf1 + conf2)/2 everywhere;
    w_union = (conf1 + conf2)/2 on agreement, else the confidence of the network whose label was
    taken. ``reweight=False`` sets every weight to 1. No confidence threshold (official).
    ``weight_scope``: the confidence behind the weights. ``"pixel"`` (the official code as it
    is): each pixel's max class probability. ``"batch"`` (the first release): one number per
    teacher and batch, the largest entry of a softmax taken over the *width* axis of its logits
    (``torch.max(F.softmax(logits, dim=-1))`` there), broadcast to every pixel.
    ``all_reduce`` is passed to ``class_disagreement`` (multi-GPU runs).
    """
    if union_rule not in UNION_RULES:
        raise KitError(f"union_rule: expected one of {', '.join(UNION_RULES)}, got {union_rule!r}")
    if weight_scope not in WEIGHT_SCOPES:
        raise KitError(f"weight_scope: expected one of {', '.join(WEIGHT_SCOPES)}, got {weight_scope!r}")
    for name, t in (("teacher1", teacher1), ("teacher2", teacher2)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.dtype.is_floating_point:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise KitError(f"{name}: expected float logits [B, C, H, W], got {got}")
    check_same_shape("teacher1", teacher1, "teacher2", teacher2)
    num_classes = teacher1.shape[1]
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise KitError(f"ignore_index: expected an int, got {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise KitError(
            f"ignore_index: expected a value outside the classes [0, {num_classes}), "
            f"got {ignore_index}"
        )

    z1 = teacher1.detach().float()
    z2 = teacher2.detach().float()
    # ``max`` gives argmax's index (the first maximal class) and is several times faster on a CPU
    # over the strided class axis of NCHW logits.
    y1 = z1.max(dim=1).indices
    y2 = z2.max(dim=1).indices
    conf1 = torch.softmax(z1, dim=1).amax(dim=1)
    conf2 = torch.softmax(z2, dim=1).amax(dim=1)
    agree = y1 == y2
    indicator = class_disagreement(y1, y2, num_classes, all_reduce)

    if union_rule == "disagreement":
        take1 = indicator[y1] > indicator[y2]
    else:
        take1 = conf1 > conf2
    # Where the labels agree take1 is False (equal Ĩ) or irrelevant, and y2 == y1 anyway.
    union = torch.where(take1, y1, y2)
    inter = torch.where(agree, y1, torch.full_like(y1, ignore_index))

    if weight_scope == "batch":  # the first release's one scalar per teacher (0-dim, no host sync)
        c1, c2 = torch.softmax(z1, dim=-1).amax(), torch.softmax(z2, dim=-1).amax()
    else:
        c1, c2 = conf1, conf2
    if reweight:
        w_inter = ((c1 + c2) / 2).expand_as(conf1)
        w_union = torch.where(agree, w_inter, torch.where(take1, c1, c2).expand_as(conf1))
    else:
        w_inter = torch.ones_like(conf1)
        w_union = torch.ones_like(conf1)
    return PseudoLabels(
        y1=y1,
        y2=y2,
        conf1=conf1,
        conf2=conf2,
        agree=agree,
        indicator=indicator,
        inter=inter,
        union=union,
        w_inter=w_inter,
        w_union=w_union,
    )


def weighted_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    *,
    normalise: str = "all",
    per_pixel: bool = True,
) -> torch.Tensor:
    """Confidence-weighted cross-entropy, a 0-dim fp32 tensor.

    logits [B, C, H, W] (any float dtype, computed in fp32), target [B, H, W] long, weight
    [B, H, W] or None (= 1; detached: no gradient flows through the weights). Returns the sum of
    weight · CE over the pixels divided by ``normalise``'s count: ``"all"`` B·H·W pixels (the
    official code: ignored pixels add 0 but still count, so the intersection loss shrinks with the
    agreement ratio) or ``"labeled"`` the pixels with a label (the first release's mean CE).
    ``per_pixel=False`` (the first release) multiplies the mean CE by the mean weight instead of
    weighting each pixel's CE.
    """
    if normalise not in LOSS_NORMALISERS:
        raise KitError(f"normalise: expected one of {', '.join(LOSS_NORMALISERS)}, got {normalise!r}")
    if logits.dim() != 4:
        raise KitError(f"logits: expected [B, C, H, W], got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise KitError(f"target: expected shape {expected}, got {tuple(target.shape)}")
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none", ignore_index=ignore_index)
    if weight is not None:
        if tuple(weight.shape) != expected:
            raise KitError(f"weight: expected shape {expected}, got {tuple(weight.shape)}")
    w = None if weight is None else weight.detach().float()
    if normalise == "all":
        mean_ce = lambda x: x.mean()  # noqa: E731
    else:
        mean_ce = lambda x: x.sum() / (target != ignore_index).sum().clamp(min=1)  # noqa: E731
    if w is None:
        return mean_ce(ce)
    return mean_ce(ce) * w.mean() if not per_pixel else mean_ce(ce * w)
