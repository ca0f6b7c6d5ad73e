"""The methods: one step function each, from a batch to the loss (docs/method.md §2–§5).

A step function ``step(nets, batch, cfg, lam, gen, all_reduce=None) -> StepOut`` computes one
iteration's loss; the training loop (``train``) owns everything around it (optimizers, lr, AMP,
logging). ``supervised`` trains one net on labeled images; ``cps`` and ``cpcl`` train two nets
that teach each other on CutMix-mixed unlabeled images. ``label_stats`` summarises a step's pseudo
labels for the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import Config
from ..constants import IGNORE_INDEX as IGNORE
from ..data.outlines import boundary_band
from .cpcl import agreement, cutmix_box_masks, mix, pseudo_supervision, weighted_ce
from .perturb import outside, random_affine, warp, warp_labels

# Cityscapes OHEM class weights (docs/method.md §5), in trainId order.
CITYSCAPES_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                      0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)



def ohem_ce(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 50000,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """Online hard example mining CE (CPS/CPCL Cityscapes): keep pixels whose GT probability is at most
    max(thresh, the min_kept-th smallest GT probability); class-weighted mean. ``min_kept`` is per image."""
    logits = logits.float()
    valid = target != IGNORE
    n_valid = valid.sum()
    with torch.no_grad():
        prob = logits.softmax(1).gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
        prob = torch.where(valid, prob, torch.ones_like(prob))
        k = min_kept * target.shape[0]
        flat = prob.flatten()
        kth = flat.kthvalue(min(k, flat.numel())).values
        threshold = kth.clamp(min=thresh)  # max(kth, thresh) without a host-to-device copy of thresh
        keep = valid & ((prob <= threshold) | (n_valid <= k))
    return F.cross_entropy(logits, torch.where(keep, target, IGNORE), weight=weight, ignore_index=IGNORE)


@dataclass
class StepOut:
    loss: torch.Tensor
    parts: dict = field(default_factory=dict)  # scalar tensors, detached
    labels: object | None = None                # PseudoLabels of the step, for analysis
    mixed_truth: torch.Tensor | None = None     # true masks of the mixed image (analysis only)
    # Each net's own share of ``loss`` (its terms alone), so that each net can run its backward on
    # its own thread: the nets' graphs are disjoint, so each gets the gradients ``loss`` would give.
    per_net: tuple | None = None


def each(fn, items) -> list:
    """``[fn(x) for x in items]``: how a step applies the same work to each net. The CPU trainer
    passes a map over two threads instead (``par``), one net per thread."""
    return [fn(x) for x in items]


_CLASS_WEIGHTS: dict = {}  # device -> the Cityscapes weights there, copied once per process


def _cityscapes_weights(device: torch.device) -> torch.Tensor:
    w = _CLASS_WEIGHTS.get(device)
    if w is None:
        w = _CLASS_WEIGHTS[device] = torch.tensor(CITYSCAPES_WEIGHTS).to(device, non_blocking=True)
    return w


def sup_loss(cfg: Config, logits, target):
    if cfg.sup_loss == "ohem":
        w = _cityscapes_weights(logits.device) if cfg.dataset == "cityscapes" else None
        return ohem_ce(logits, target, weight=w)
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)


def supervised_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
                    all_reduce=None, par=each) -> StepOut:
    (net,) = nets
    loss = sup_loss(cfg, net(batch.x_l), batch.y_l)
    return StepOut(loss, {"sup1": loss.detach()}, per_net=(loss,))


def _teachers(nets, batch, mask, bn: str = "train", par=each):
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


def _cutmix(batch, gen, boxes: int):
    """(mask float [Bu,1,H,W] or None, the student's image, the true masks on it or None).

    boxes=0 (not the official recipe): no mixing, mask None, the student sees u0 and u0's pseudo
    label. A digit's identity is its whole shape, so a box can hand the student fragments it cannot
    name."""
    if boxes == 0:
        return None, batch.u0, batch.u0_mask
    b, _, h, w = batch.u0.shape
    mask = cutmix_box_masks(b, (h, w), n_boxes=boxes, generator=gen, device=batch.u0.device)
    truth = mix(batch.u0_mask, batch.u1_mask, mask) if batch.u0_mask is not None else None
    return mask, mix(batch.u0, batch.u1, mask), truth


def _student_view(cfg: Config, gen, u_mix, teachers, truth):
    """What the student sees, with its teachers' logits and the true masks on the same pixels.

    ``student_aug="none"`` (official): the mixed image itself, no pixel void. ``"affine"`` (not in the
    recipe; ``perturb``): the mixed image warped by a random rotation, scale and shift, the teachers'
    mixed logits warped alike, so each pseudo label names the pixel the student sees; ``void`` marks
    the pixels warped in from outside the scene, which get no pseudo label."""
    if cfg.student_aug == "none":
        return _layout(cfg, u_mix), teachers, truth, None
    # Drawn on the CPU generator; six numbers per image go to the device without a host wait.
    theta = random_affine(u_mix.shape[0], generator=gen).to(u_mix.device, non_blocking=True)
    off = outside(theta, u_mix.shape[-2:], u_mix.device)
    # Border padding gives every pixel a teacher argmax; those outside are voided in the targets.
    teachers = [warp(t, theta, padding="border") for t in teachers]
    truth = warp_labels(truth, theta, off) if truth is not None else None
    return _layout(cfg, warp(u_mix, theta)), teachers, truth, off


def _layout(cfg: Config, x: torch.Tensor) -> torch.Tensor:
    """The student's image in the nets' memory layout (channels_last when they are)."""
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def _void(void, *targets):
    """``targets`` with IGNORE where ``void`` (bool [B, H, W]) is True; unchanged when it is None."""
    return targets if void is None else tuple(t.masked_fill(void, IGNORE) for t in targets)


@dataclass
class Pseudo:
    """One step's pseudo-supervision on the unlabeled batch, as the students get it.

    image float [Bu,3,H,W]: what the students see (u0, CutMix-mixed with u1 and/or warped, per the
    recipe); labels: the teachers' ``PseudoLabels`` on the same pixels; truth int64 [Bu,H,W] or None:
    the true masks there (analysis only); void bool [Bu,H,W] or None: pixels that get no pseudo label
    (warped in from outside the scene, or within ``pseudo_void_band`` of a teacher's outline);
    mask float [Bu,1,H,W] or None: the CutMix mask (1: the pixel comes from u1)."""

    image: torch.Tensor
    labels: object
    truth: torch.Tensor | None
    void: torch.Tensor | None
    mask: torch.Tensor | None


def pseudo_labels(nets, batch, cfg: Config, gen: torch.Generator, all_reduce=None, par=each) -> Pseudo:
    """The students' view of ``batch`` and the teachers' pseudo labels on it: the one function behind
    the CPS and CPCL steps and every notebook figure of pseudo labels (``analysis``).

    Draws from ``gen`` in a fixed order (CutMix boxes, then the affine warp), so the same generator
    state gives the same view. CPS takes only the hard labels y1, y2 (no weights); CPCL builds the
    intersection and union labels by ``cfg.union_rule`` with the weights ``cfg.reweight`` asks for."""
    mask, u_mix, truth = _cutmix(batch, gen, cfg.cutmix_boxes)
    teachers = _teachers(nets, batch, mask, cfg.teacher_bn, par)
    image, (t1, t2), truth, off = _student_view(cfg, gen, u_mix, teachers, truth)
    if cfg.method == "cps":
        labels = pseudo_supervision(t1, t2, reweight=False)
    else:
        labels = pseudo_supervision(t1, t2, union_rule=cfg.union_rule, reweight=cfg.reweight,
                                    weight_scope=cfg.weight_scope, all_reduce=all_reduce)
    void = off
    if cfg.pseudo_void_band:
        band = boundary_band(labels.y1, cfg.pseudo_void_band) | boundary_band(labels.y2, cfg.pseudo_void_band)
        void = band if void is None else void | band
    return Pseudo(image, labels, truth, void, mask)


def student_view(cfg: Config, batch, gen: torch.Generator):
    """(image [Bu,3,H,W], truth [Bu,H,W] or None, void [Bu,H,W] or None, CutMix mask or None): the
    students' view of ``batch`` alone, without teachers -- the same draws as ``pseudo_labels``."""
    mask, u_mix, truth = _cutmix(batch, gen, cfg.cutmix_boxes)
    image, _, truth, off = _student_view(cfg, gen, u_mix, [], truth)
    return image, truth, off, mask


def describe_student_view(cfg: Config) -> str:
    """The students' view of ``cfg``'s recipe in words, for figures and notebooks."""
    mixing = (f"CutMix: {cfg.cutmix_boxes} box{'es' if cfg.cutmix_boxes > 1 else ''} of u1 pasted into u0"
              if cfg.cutmix_boxes else "no CutMix")
    warp = "then rotated, scaled and shifted (affine)" if cfg.student_aug == "affine" else "no warp"
    if not cfg.cutmix_boxes and cfg.student_aug == "affine":
        return "u0 rotated, scaled and shifted (affine warp), no CutMix"
    return f"{mixing}, {warp}"


def cps_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
             all_reduce=None, par=each) -> StepOut:
    """Cross pseudo supervision: each net learns from the other's hard label on the students' view."""
    s1, s2 = par(lambda net: sup_loss(cfg, net(batch.x_l), batch.y_l), nets)
    parts = {"sup1": s1.detach(), "sup2": s2.detach()}
    if lam == 0:
        return StepOut(s1 + s2, parts, per_net=(s1, s2))
    p = pseudo_labels(nets, batch, cfg, gen, par=par)
    y1, y2 = _void(p.void, p.labels.y1, p.labels.y2)
    u1, u2 = par(lambda k: weighted_ce(nets[k](p.image), (y2, y1)[k]), (0, 1))
    parts.update(unsup1=u1.detach(), unsup2=u2.detach())
    return StepOut(s1 + s2 + lam * (u1 + u2), parts, p.labels, p.truth, per_net=(s1 + lam * u1, s2 + lam * u2))


def cpcl_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
              all_reduce=None, par=each) -> StepOut:
    """CPCL: net 1 learns the intersection label, net 2 the union label, each pixel's CE weighted by
    the teachers' confidence; L = CE1 + CE2 + λ(L_inter + L_union)."""
    s1, s2 = par(lambda net: sup_loss(cfg, net(batch.x_l), batch.y_l), nets)
    parts = {"sup1": s1.detach(), "sup2": s2.detach()}
    if lam == 0:  # supervised-only start (CPU presets): skip the teacher and student passes
        return StepOut(s1 + s2, parts, per_net=(s1, s2))
    p = pseudo_labels(nets, batch, cfg, gen, all_reduce, par)
    labels = p.labels
    # weight_scope="batch" scales each mean CE by its mean weight; "pixel" (the official code)
    # weights every pixel's CE. inter_norm: what the intersection loss is averaged over.
    how = {"per_pixel": cfg.weight_scope == "pixel"}
    inter, union = _void(p.void, labels.inter, labels.union)
    target = {"inter": (inter, labels.w_inter, {**how, "normalise": cfg.inter_norm}),
              "union": (union, labels.w_union, how)}

    def loss(k):
        label, weight, kw = target[cfg.targets[k]]
        return weighted_ce(nets[k](p.image), label, weight, **kw)

    u1, u2 = par(loss, (0, 1))
    parts.update(unsup1=u1.detach(), unsup2=u2.detach())
    return StepOut(s1 + s2 + lam * (u1 + u2), parts, labels, p.truth, per_net=(s1 + lam * u1, s2 + lam * u2))


METHOD_STEPS = {"supervised": supervised_step, "cps": cps_step, "cpcl": cpcl_step}


def label_stats(labels, truth: torch.Tensor | None, num_classes: int) -> dict[str, torch.Tensor]:
    """Pseudo-label statistics of one step (tensors; the loop moves them to the host when logging).

    coverage: fraction of pixels with an intersection label (agreement) — the union covers all.
    acc_*: accuracy of each label kind against the true masks, where the data set has them.
    ind_c: the class-wise disagreement indicator; inter_frac_c: of the pixels whose union label is
    class c, the fraction that also carry an intersection label.
    """
    s = {"agreement": agreement(labels.y1, labels.y2),
         "w_inter": labels.w_inter.mean(), "w_union": labels.w_union.mean(),
         "w_agree": labels.w_union[labels.agree].mean(),
         "w_disagree": labels.w_union[~labels.agree].mean()}
    union_counts = torch.bincount(labels.union.flatten(), minlength=num_classes)[:num_classes]
    inter_counts = torch.bincount(labels.union[labels.agree].flatten(), minlength=num_classes)[:num_classes]
    frac = inter_counts / union_counts.clamp(min=1)
    frac = torch.where(union_counts > 0, frac, torch.full_like(frac, float("nan")))
    for c in range(num_classes):
        s[f"ind_{c}"] = labels.indicator[c]
        s[f"inter_frac_{c}"] = frac[c]
    if truth is not None:
        known = truth != IGNORE
        denom = known.sum().clamp(min=1)
        s["acc_union"] = ((labels.union == truth) & known).sum() / denom
        s["acc_y1"] = ((labels.y1 == truth) & known).sum() / denom
        s["acc_y2"] = ((labels.y2 == truth) & known).sum() / denom
        inter_known = known & labels.agree
        s["acc_inter"] = ((labels.inter == truth) & inter_known).sum() / inter_known.sum().clamp(min=1)
    return s
