"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy.

As in the official evaluator (docs/method.md §8): pixels whose ground truth is the ignore
label or outside [0, C) are skipped; IoU_c = TP / (TP + FP + FN); mIoU is the nan-mean over classes.
"""

from __future__ import annotations

import math

import torch

from ..constants import IGNORE_INDEX
from ..errors import KitError
from ..method.cpcl import check_labels, check_num_classes, check_same_shape, confusion_between

__all__ = ["confusion_matrix", "iou_from_confusion", "pixel_accuracy"]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Confusion counts, LongTensor [C, C] on the inputs' device: rows = target, cols = pred.

    pred, target: integer label maps of equal shape (e.g. [B, H, W]). Pixels whose target equals
    ``ignore_index`` or lies outside [0, C) are skipped. A prediction outside [0, C) at a counted
    pixel is an error (KitError); checking it reads one flag back from the device.
    """
    c = check_num_classes(num_classes)
    check_labels("pred", pred)
    check_labels("target", target)
    check_same_shape("pred", pred, "target", target)
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long().to(t.device)
    valid = (t >= 0) & (t < c) & (t != ignore_index)
    bad_pred = valid & ((p < 0) | (p >= c))
    if bool(bad_pred.any()):
        raise KitError(f"pred: expected class ids in [0, {c}) at counted pixels")
    # Skipped pixels are counted as an extra class c and dropped, instead of boolean indexing
    # (which would need the count of valid pixels on the host).
    extra = torch.full_like(t, c)
    return confusion_between(torch.where(valid, t, extra), torch.where(valid, p, extra), c + 1)[:c, :c]


def _check_cm(cm) -> torch.Tensor:
    if not isinstance(cm, torch.Tensor) or cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        got = tuple(cm.shape) if isinstance(cm, torch.Tensor) else type(cm).__name__
        raise KitError(f"cm: expected a square [C, C] confusion matrix, got {got}")
    return cm.double()


def iou_from_confusion(cm: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-class IoU (float64 [C], on cm's device) and mIoU (float) from confusion counts [C, C].

    A class absent from both target and prediction (TP + FP + FN = 0) gets NaN and is left out of
    the mean; mIoU is NaN only if every class is absent.
    """
    m = _check_cm(cm)
    tp = m.diagonal()
    denom = m.sum(dim=0) + m.sum(dim=1) - tp  # TP + FP + FN
    iou = tp / denom  # 0/0 -> NaN for absent classes, as wanted
    valid = ~torch.isnan(iou)
    n_valid = int(valid.sum())
    miou = float(iou[valid].sum()) / n_valid if n_valid else math.nan
    return iou, miou


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Fraction of counted pixels predicted correctly: trace / sum (NaN for an empty matrix)."""
    m = _check_cm(cm)
    total = float(m.sum())
    return float(m.diagonal().sum()) / total if total else math.nan
