"""The parts of a two-net step that a recipe switches, each the paper's way by default.

The steps (``steps.py``) call these where the paper's algorithm has one fixed thing: how the
unlabeled images are mixed (``cutmix_boxes``), how the teachers' BatchNorm predicts (``teacher_bn``),
what the students see beyond the mixed image (``student_aug``), which pixels get no pseudo label
(``pseudo_void_band``). The switches of the labels and losses themselves (``union_rule``, ``reweight``,
``weight_scope``, ``inter_norm``, ``targets``) are arguments of ``cpcl.pseudo_supervision`` and
``cpcl.weighted_ce``. Why the CPU presets switch some of them: docs/method.md §7 and
``deviations.DEVIATIONS``; the ablation grids (``experiments.ablate.VARIANTS``) combine them.
"""

from __future__ import annotations

import torch

from ..config import Config
from ..constants import IGNORE_INDEX as IGNORE
from ..data.outlines import boundary_band
from .cpcl import cutmix_box_masks, mix
from .perturb import outside, random_affine, warp, warp_labels


def each(fn, items) -> list:
    """``[fn(x) for x in items]``: how a step applies the same work to each net. The CPU trainer
    passes a map over two threads instead (``par``), one net per thread."""
    return [fn(x) for x in items]


def shard_of(batch) -> tuple[int, int]:
    """(rank, world size) of ``batch``: which slots of the global batch it holds (``loaders.Batch``)."""
    return getattr(batch, "shard", (0, 1))


def cutmix(batch, gen: torch.Generator, boxes: int):
    """(mask float [Bu,1,H,W] or None, the mixed image, the true masks on it or None).

    The paper: ``boxes`` boxes of u1 pasted into u0 (official 3). boxes=0: no mixing, mask None, the
    student sees u0 and u0's pseudo label (a digit's identity is its whole shape, so a box can hand
    the student fragments it cannot name). Under several processes the boxes are drawn for the
    global batch and each process takes its images' ones, so the draws are those of one process
    training the whole batch."""
    if boxes == 0:
        return None, batch.u0, batch.u0_mask
    b, _, h, w = batch.u0.shape
    rank, world = shard_of(batch)
    mask = cutmix_box_masks(b * world, (h, w), n_boxes=boxes, generator=gen,
                            device=batch.u0.device)[rank::world]
    truth = mix(batch.u0_mask, batch.u1_mask, mask) if batch.u0_mask is not None else None
    return mask, mix(batch.u0, batch.u1, mask), truth


def teachers(nets, batch, mask, bn: str = "train", par=each) -> list:
    """Mixed teacher logits of both nets, without gradients; u0's own logits when ``mask`` is None
    (no CutMix: nothing to mix, so u1 is neither loaded nor predicted).

    ``bn="train"`` (official): BatchNorm in train mode, one pass per net and image batch (four with
    CutMix), not one concatenated pass: batching u0 with u1 would change the batch statistics, and
    therefore the logits, of both.
    ``bn="eval"``: BatchNorm uses its running statistics, so each net predicts u0 and u1 in one pass
    and a teacher's label of an image does not depend on the images batched with it."""
    images = [batch.u0] if mask is None else [batch.u0, batch.u1]

    @torch.no_grad()  # inside: grad mode is per thread
    def teach(net):
        if bn == "train":
            logits = [net(u) for u in images]
        else:
            net.eval()
            logits = net(torch.cat(images)).chunk(len(images))
            net.train()
        return logits[0] if mask is None else mix(*logits, mask)

    return par(teach, nets)


def warp_view(cfg: Config, gen: torch.Generator, image, logits, truth, shard: tuple[int, int] = (0, 1)):
    """(image, logits, truth, void): what the student sees, with its teachers' logits and the true
    masks on the same pixels.

    ``student_aug="none"`` (official): the mixed image itself, no pixel void. ``"affine"``
    (``perturb``): the image warped by a random rotation, scale and shift, the teachers' logits
    warped alike, so each pseudo label names the pixel the student sees; ``void`` marks the pixels
    warped in from outside the scene, which get no pseudo label. ``shard``: as ``cutmix``'s boxes, the
    warps are drawn for the global batch and sliced."""
    if cfg.student_aug == "none":
        return image, logits, truth, None
    # Drawn on the CPU generator; six numbers per image go to the device without a host wait.
    rank, world = shard
    theta = random_affine(image.shape[0] * world, generator=gen)[rank::world]
    theta = theta.to(image.device, non_blocking=True)
    off = outside(theta, image.shape[-2:], image.device)
    # Border padding gives every pixel a teacher argmax; those outside are voided in the targets.
    logits = [warp(t, theta, padding="border") for t in logits]
    truth = warp_labels(truth, theta, off) if truth is not None else None
    return warp(image, theta), logits, truth, off


def void_band(cfg: Config, y1: torch.Tensor, y2: torch.Tensor, void: torch.Tensor | None):
    """``void`` (bool [B,H,W] or None) joined with the pixels within ``cfg.pseudo_void_band`` of
    either teacher's outlines (0, the paper: none)."""
    if not cfg.pseudo_void_band:
        return void
    band = boundary_band(y1, cfg.pseudo_void_band) | boundary_band(y2, cfg.pseudo_void_band)
    return band if void is None else void | band


def without(void, *targets):
    """``targets`` with IGNORE where ``void`` (bool [B, H, W]) is True; unchanged when it is None."""
    return targets if void is None else tuple(t.masked_fill(void, IGNORE) for t in targets)


def draw_view(cfg: Config, batch, gen: torch.Generator):
    """(image [Bu,3,H,W], truth [Bu,H,W] or None, void [Bu,H,W] or None, CutMix mask or None): the
    students' view of ``batch`` alone, without teachers -- the same draws as ``steps.pseudo_labels``."""
    mask, image, truth = cutmix(batch, gen, cfg.cutmix_boxes)
    image, _, truth, off = warp_view(cfg, gen, image, [], truth, shard_of(batch))
    return image, truth, off, mask


def describe_student_view(cfg: Config) -> str:
    """The students' view of ``cfg``'s recipe in words, for figures and notebooks."""
    mixing = (f"CutMix: {cfg.cutmix_boxes} box{'es' if cfg.cutmix_boxes > 1 else ''} of u1 pasted into u0"
              if cfg.cutmix_boxes else "no CutMix")
    warped = "then rotated, scaled and shifted (affine)" if cfg.student_aug == "affine" else "no warp"
    if not cfg.cutmix_boxes and cfg.student_aug == "affine":
        return "u0 rotated, scaled and shifted (affine warp), no CutMix"
    return f"{mixing}, {warped}"
