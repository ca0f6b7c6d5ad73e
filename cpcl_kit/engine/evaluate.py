"""Inference (whole image or sliding window) and mIoU evaluation over a data set.

Follows the official evaluator (docs/method.md §8): single scale, no flip; with a crop
size, images whose long side fits are padded (centred, value 0) to crop x crop and run once;
larger images are covered by a grid of crop x crop windows (stride ceil(crop·stride_ratio), last
window flush with the border) whose raw logits are summed.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import registry
from ..config import Config
from ..constants import IGNORE_INDEX
from ..errors import KitError
from ..limits import MAX_SIDE
from .distributed import all_reduce_sum, shard as process_shard
from .metrics import confusion_matrix, iou_from_confusion, pixel_accuracy

__all__ = ["branch_metrics", "eval_models", "evaluate", "evaluate_run", "predict_logits", "run_metrics", "window_starts"]


def _as_models(model_or_models) -> list[nn.Module]:
    models = (
        list(model_or_models) if isinstance(model_or_models, (list, tuple)) else [model_or_models]
    )
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise KitError("models: expected an nn.Module or a non-empty list of nn.Modules")
    return models


@contextmanager
def _eval_mode(models: list[nn.Module]):
    """Put every module in eval mode, then restore each submodule's own train/eval flag."""
    saved = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for flags in saved:
            for m, training in flags:
                m.training = training


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of size ``crop`` covering [0, length) (length >= crop).

    ceil((length - crop) / stride) + 1 windows at multiples of ``stride``, the last one moved back
    so that it ends exactly at ``length``.
    """
    n = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(n)]


def _centre_pad(image: torch.Tensor, height: int, width: int):
    """Zero-pad [B, K, H, W] centred to at least (height, width); returns (padded, (top, left))."""
    h, w = image.shape[-2:]
    ph, pw = max(height - h, 0), max(width - w, 0)
    top, left = ph // 2, pw // 2
    if ph or pw:
        image = F.pad(image, (left, pw - left, top, ph - top), value=0.0)
    return image, (top, left)


def _check_logits(out, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], num_classes, *x.shape[-2:]):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise KitError(
            f"models: expected logits of shape {(x.shape[0], num_classes, *x.shape[-2:])} "
            f"(num_classes={num_classes}), got {got}"
        )
    return out.float()


def _ensemble(outs: list[torch.Tensor]) -> torch.Tensor:
    """The mean softmax of several models' fp32 logits."""
    return torch.stack([o.softmax(dim=1) for o in outs]).mean(dim=0)


def _scores(models: list[nn.Module], x: torch.Tensor, num_classes: int, branches: bool) -> dict:
    """fp32 scores [B, C, h, w] of one forward pass per model: ``{"scores": ...}``, the raw logits
    of one model or the mean softmax of several; with ``branches``, each model's logits under its
    number ("1", "2", ...) and their ensemble under "ensemble", from the same passes."""
    outs = [_check_logits(model(x), x, num_classes) for model in models]
    if branches:
        return {**{str(k + 1): o for k, o in enumerate(outs)}, "ensemble": _ensemble(outs)}
    return {"scores": outs[0] if len(outs) == 1 else _ensemble(outs)}


def predict_logits(
    model_or_models,
    image: torch.Tensor,
    *,
    crop: int | None = None,
    stride_ratio: float = 2 / 3,
    num_classes: int,
) -> torch.Tensor:
    """Class scores for a batch of images, fp32 [B, C, H, W] on the image's device.

    model_or_models: one nn.Module returning logits at input size, or a list/tuple of modules
    (ensemble: their softmax probabilities are averaged, so scores are probabilities, not logits).
    image: normalised [B, 3, H, W]. crop=None: one whole-image forward. crop=int: section 7 sliding
    window; overlapping windows' scores are summed (argmax of sum == argmax of mean). Models run in
    eval mode under ``torch.inference_mode``; their train/eval flags are restored afterwards.
    """
    models = _as_models(model_or_models)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise KitError(f"num_classes: expected an int >= 1, got {num_classes!r}")
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise KitError(f"image: expected a tensor [B, 3, H, W], got {got}")
    _check_window(crop, stride_ratio)
    return _predict(models, image, crop, stride_ratio, num_classes, branches=False)["scores"]


def _check_window(crop, stride_ratio) -> None:
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise KitError(f"crop: expected None or an int >= 1, got {crop!r}")
    if crop is not None and crop > MAX_SIDE:  # the window is padded to crop x crop: it must fit
        raise KitError(f"crop: expected at most {MAX_SIDE} px (one window of that side must fit in this "
                       f"machine's memory), got {crop}")
    if not isinstance(stride_ratio, (int, float)) or not 0 < stride_ratio <= 1:
        raise KitError(f"stride_ratio: expected a number in (0, 1], got {stride_ratio!r}")


def _predict(models: list[nn.Module], image: torch.Tensor, crop: int | None, stride_ratio: float,
             num_classes: int, branches: bool) -> dict:
    """``predict_logits`` for named scores (``_scores``): every window runs each model once."""
    b, _, h, w = image.shape
    with _eval_mode(models), torch.inference_mode():
        if crop is None:
            return _scores(models, image, num_classes, branches)
        padded, (top, left) = _centre_pad(image, crop, crop)
        if max(h, w) <= crop:
            scores = _scores(models, padded, num_classes, branches)
            return {k: v[:, :, top : top + h, left : left + w] for k, v in scores.items()}
        hp, wp = padded.shape[-2:]
        stride = math.ceil(crop * stride_ratio)
        total = {}
        for y in window_starts(hp, crop, stride):
            for x in window_starts(wp, crop, stride):
                window = padded[:, :, y : y + crop, x : x + crop]
                for k, v in _scores(models, window, num_classes, branches).items():
                    if k not in total:
                        total[k] = torch.zeros(b, num_classes, hp, wp, dtype=torch.float32, device=image.device)
                    total[k][:, :, y : y + crop, x : x + crop] += v
        return {k: v[:, :, top : top + h, left : left + w] for k, v in total.items()}


def _model_device(models: list[nn.Module]) -> torch.device:
    for p in models[0].parameters():
        return p.device
    for buf in models[0].buffers():
        return buf.device
    return torch.device("cpu")


# ``evaluate``'s default batch: as many images as four 2048x1024 Cityscapes frames hold in pixels, at
# most 64. Small images then pass 64 at a time (a digit scene's net is mostly per-call overhead at
# 4), large ones 4 at a time. The batch changes the convolutions' blocking, hence the last bits of
# the logits: a trained digit run's confusion matrices come out the same at 4, 64 and 1,000 images
# a batch, but a near-tie pixel of a barely trained net may move.
EVAL_PIXELS = 4 * 2048 * 1024
MAX_EVAL_BATCH = 64


def auto_batch(height: int, width: int) -> int:
    """Images of ``height`` x ``width`` per evaluation batch by default (``EVAL_PIXELS``)."""
    return max(1, min(MAX_EVAL_BATCH, EVAL_PIXELS // max(1, height * width)))


def _batches(dataset, batch_size: int | None):
    """Yield (images [B, 3, H, W], masks [B, H, W]) of consecutive same-size items, at most
    batch_size at a time (None: ``auto_batch`` of their size; images of different sizes cannot be
    stacked)."""
    images, masks = [], []
    for i, item in enumerate(dataset):
        try:
            image, mask = item[0], item[1]
        except (TypeError, IndexError, KeyError):
            got = type(item).__name__
            msg = f"dataset: expected items (image, mask), got {got} at index {i}"
            raise KitError(msg) from None
        image, mask = torch.as_tensor(image), torch.as_tensor(mask)
        if image.dim() != 3 or mask.dim() != 2 or image.shape[-2:] != mask.shape:
            raise KitError(
                f"dataset: expected image [3, H, W] and mask [H, W] of the same H, W at index {i}, "
                f"got {tuple(image.shape)} and {tuple(mask.shape)}"
            )
        if images and (image.shape != images[0].shape
                       or len(images) == (batch_size or auto_batch(*images[0].shape[-2:]))):
            yield torch.stack(images), torch.stack(masks)
            images, masks = [], []
        images.append(image)
        masks.append(mask)
    if images:
        yield torch.stack(images), torch.stack(masks)


def evaluate(
    models,
    dataset,
    num_classes: int,
    *,
    crop: int | None = None,
    stride_ratio: float = 2 / 3,
    batch_size: int | None = None,
    device=None,
    progress: bool = True,
    ignore_index: int = IGNORE_INDEX,
    leave: bool = True,
    branches: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """mIoU of a model (or an ensemble, see ``predict_logits``) over a data set.

    dataset: iterable of (image float [3, H, W] normalised, mask long [H, W]); consecutive items of
    equal size are batched up to ``batch_size`` (None: ``auto_batch`` of their size). device: where
    images go; default = device of the first model's parameters (the models must already be there).
    Returns a dict with ``miou`` (float), ``per_class_iou`` (list of C floats, NaN for classes
    absent from target and prediction), ``pixel_acc`` (float) and ``confusion`` (LongTensor [C, C] on the CPU, rows =
    target, cols = prediction). ``leave=False`` clears the progress bar when done (an evaluation
    inside a training run's own bar).

    ``branches=True`` with several models: ``{"1": ..., "2": ..., "ensemble": ...}``, one such dict
    per model and one for their ensemble, all from one forward pass per model and batch (the
    ensemble's scores are those ``evaluate(models)`` computes, bit for bit).

    ``shard=(rank, world)``: this process scores items rank, rank + world, ... and the confusion
    counts are summed over the processes (``distributed.all_reduce_sum``), so every process returns
    the numbers of the whole set, equal to one process's. Every process must call it.
    """
    model_list = _as_models(models)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise KitError(f"num_classes: expected an int >= 1, got {num_classes!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise KitError(f"batch_size: expected None or an int >= 1, got {batch_size!r}")
    _check_window(crop, stride_ratio)
    device = _model_device(model_list) if device is None else torch.device(device)
    named = branches and len(model_list) > 1

    rank, world = shard
    try:
        total = len(dataset)
    except TypeError:
        total = None
    if world > 1:  # read lazily: a shard of a large validation set need not fit in memory at once
        mine, whole = range(rank, total, world), dataset
        dataset, total = (whole[i] for i in mine), len(mine)
    # Every key from the start, so that every process sums the same counts in the same order.
    cms = {k: torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
           for k in (["1", "2", "ensemble"] if named else ["scores"])}
    with tqdm(total=total, desc="evaluate", unit="img", disable=not progress, leave=leave) as bar:
        for images, masks in _batches(dataset, batch_size):
            images = images.to(device=device, dtype=torch.float32)
            masks = masks.to(device)
            scores = _predict(model_list, images, crop, stride_ratio, num_classes, branches=named)
            for k, v in scores.items():
                cms[k] += confusion_matrix(v.max(dim=1).indices, masks, num_classes, ignore_index)
            bar.update(images.shape[0])
    if world > 1:
        for k in cms:
            all_reduce_sum(cms[k])
    results = {k: _result(cm.cpu()) for k, cm in cms.items()}
    return results if named else results["scores"]


def _result(cm: torch.Tensor) -> dict:
    iou, miou = iou_from_confusion(cm)
    return {
        "miou": miou,
        "per_class_iou": [float(v) for v in iou],
        "pixel_acc": pixel_accuracy(cm),
        "confusion": cm,
    }


# ------------------------------------------------------------------------------------------------
# a run's evaluation


def eval_models(nets, branch: str):
    """What evaluates ``branch`` of a run's nets: net 1, net 2, or both (their ensemble)."""
    if len(nets) == 1:
        return nets[0]
    return {"1": nets[0], "2": nets[1], "ensemble": list(nets)}[branch]


def evaluate_run(cfg: Config, nets, data, progress: bool = True) -> dict:
    """mIoU, per-class IoU, pixel accuracy (and digit-only mIoU on digit scenes) of the evaluated
    branch (``eval_branch``: net 1 by default, as the paper reports) on the validation set.

    A two-net run scores net 1, net 2 and their ensemble (mean softmax) from one pass per net, under
    ``branches`` {"1", "2", "ensemble"}; the top-level numbers stay
    ``eval_branch``'s, so a table can show whether the progressive net or the pair beats the
    conservative net the paper reports."""
    if len(nets) == 2:  # one pass per net scores net 1, net 2 and their ensemble
        branches = branch_metrics(cfg, list(nets), data, progress, branches=True)
    else:
        branches = {cfg.eval_branch: branch_metrics(cfg, nets[0], data, progress)}
    for net in nets:
        net.train()
    m = {**branches[cfg.eval_branch], "class_names": list(data.class_names)}
    if len(nets) == 2:
        m["branches"] = branches
    return m


def branch_metrics(cfg: Config, models, data, progress: bool, leave: bool = True,
                    branches: bool = False) -> dict:
    """The metrics of ``models`` on the validation set; ``branches``: {branch: metrics} of each of
    two nets and their ensemble, from one pass per net."""
    res = evaluate(models, data.val, cfg.num_classes, crop=cfg.eval_crop, stride_ratio=cfg.eval_stride,
                   progress=progress, leave=leave, branches=branches, shard=process_shard())
    if branches:
        return {b: run_metrics(cfg, r) for b, r in res.items()}
    return run_metrics(cfg, res)


def run_metrics(cfg: Config, res: dict) -> dict:
    """``evaluate``'s result as a run's metrics, with the data set's own extra numbers."""
    per_class = [None if math.isnan(v) else v for v in res["per_class_iou"]]
    m = {"miou": res["miou"], "per_class_iou": per_class, "pixel_acc": res["pixel_acc"]}
    extra = registry.dataset(cfg.dataset).metrics
    if extra is not None:
        m.update(extra(per_class))
    if not math.isfinite(m["miou"]):
        raise KitError("evaluation gave a non-finite mIoU: the validation set has no labeled pixels")
    return m
