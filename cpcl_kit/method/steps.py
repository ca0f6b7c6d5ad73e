"""The methods: one step function each, from a batch to the loss (docs/method.md §2–§5).

A step ``step(nets, batch, cfg, lam, gen, all_reduce=None, par=each) -> StepOut`` computes one
iteration's loss; the training loop (``engine.train``) owns everything around it (optimizers, lr,
AMP, logging). Each is registered once (``registry.register_method``): ``supervised`` trains one net
on labeled images; ``cps`` and ``cpcl`` train two nets that teach each other on the unlabeled
images. ``cpcl_step`` reads as the paper's algorithm; the recipe's switchable parts are ``variants``.
``label_stats`` summarises a step's pseudo labels for the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import registry
from ..config import Config
from ..constants import IGNORE_INDEX as IGNORE
from ..deviations import CPS_OWN_RECIPE
from .cpcl import PseudoLabels, agreement, pseudo_supervision, weighted_ce
from .variants import cutmix, each, shard_of, teachers, void_band, warp_view, without


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
    labels: PseudoLabels | None = None          # the step's pseudo labels, for analysis
    mixed_truth: torch.Tensor | None = None     # true masks of the students' image (analysis only)
    # Each net's own share of ``loss`` (its terms alone), so that each net can run its backward on
    # its own thread: the nets' graphs are disjoint, so each gets the gradients ``loss`` would give.
    per_net: tuple | None = None


_CLASS_WEIGHTS: dict = {}  # (data set, device) -> its OHEM class weights there, copied once per process


def sup_loss(cfg: Config, logits, target):
    """The supervised loss of the recipe: CE, or OHEM CE with the data set's class weights."""
    if cfg.sup_loss == "ohem":
        weights = registry.dataset(cfg.dataset).class_weights
        key = (cfg.dataset, logits.device)
        if weights is not None and key not in _CLASS_WEIGHTS:
            _CLASS_WEIGHTS[key] = torch.tensor(weights).to(logits.device, non_blocking=True)
        return ohem_ce(logits, target, weight=_CLASS_WEIGHTS.get(key))
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)


def supervised_losses(nets, batch, cfg: Config, par=each) -> list:
    """Each net's supervised loss on the labeled batch (the first half of every method)."""
    return par(lambda net: sup_loss(cfg, net(batch.x_l), batch.y_l), nets)


@dataclass
class StudentBatch:
    """One step's unlabeled batch as the students get it.

    image float [Bu,3,H,W]: what the students see (u0, CutMix-mixed with u1 and/or warped, per the
    recipe); labels: the teachers' ``PseudoLabels`` on the same pixels; truth int64 [Bu,H,W] or None:
    the true masks there (analysis only); void bool [Bu,H,W] or None: pixels that get no pseudo label
    (warped in from outside the scene, or within ``pseudo_void_band`` of a teacher's outline);
    mask float [Bu,1,H,W] or None: the CutMix mask (1: the pixel comes from u1)."""

    image: torch.Tensor
    labels: PseudoLabels
    truth: torch.Tensor | None
    void: torch.Tensor | None
    mask: torch.Tensor | None


def pseudo_labels(nets, batch, cfg: Config, gen: torch.Generator, all_reduce=None, par=each) -> StudentBatch:
    """The students' view of ``batch`` and the teachers' pseudo labels on it: the one function behind
    the CPS and CPCL steps and every notebook figure of pseudo labels (``analysis``).

    Draws from ``gen`` in a fixed order (CutMix boxes, then the affine warp), so the same generator
    state gives the same view. CPS takes only the hard labels y1, y2 (no weights); CPCL builds the
    intersection and union labels by ``cfg.union_rule`` with the weights ``cfg.reweight`` asks for."""
    # CutMix: boxes of u1 pasted into u0; the teachers predict u0 and u1, their logits mixed alike.
    mask, image, truth = cutmix(batch, gen, cfg.cutmix_boxes)
    t1, t2 = teachers(nets, batch, mask, cfg.teacher_bn, par)
    image, (t1, t2), truth, void = warp_view(cfg, gen, image, (t1, t2), truth, shard_of(batch))
    if cfg.method == "cps":
        labels = pseudo_supervision(t1, t2, reweight=False)
    else:
        labels = pseudo_supervision(t1, t2, union_rule=cfg.union_rule, reweight=cfg.reweight,
                                    weight_scope=cfg.weight_scope, all_reduce=all_reduce)
    void = void_band(cfg, labels.y1, labels.y2, void)
    if cfg.channels_last:  # the nets' memory layout
        image = image.contiguous(memory_format=torch.channels_last)
    return StudentBatch(image, labels, truth, void, mask)


@registry.register_method("supervised", nets=1, unlabeled=False, paper_note=lambda cfg: (
    "supervised baseline: one net with the same recipe on the labeled stream only; the CPCL repository "
    "ships no baseline script (CPS's docs/getting_started.md trains its baseline with batch 8 for the "
    "same iterations)"))
def supervised_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
                    all_reduce=None, par=each) -> StepOut:
    """One net, cross-entropy on the labeled batch."""
    (loss,) = supervised_losses(nets, batch, cfg, par)
    return StepOut(loss, {"sup1": loss.detach()}, per_net=(loss,))


def _cps_note(cfg: Config) -> str:
    own = CPS_OWN_RECIPE[cfg.preset]
    return ("CPS runs with CPCL's recipe (this preset), for a like-for-like comparison; the CPS repository's "
            "own config (charlesCXK/TorchSemiSeg " + own["source"] + ") uses "
            + "; ".join(f"{k} {v}" for k, v in own.items() if k != "source"))


@registry.register_method("cps", nets=2, unlabeled=True, paper_note=_cps_note)
def cps_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
             all_reduce=None, par=each) -> StepOut:
    """Cross pseudo supervision: each net learns from the other's hard label on the students' view."""
    s1, s2 = supervised_losses(nets, batch, cfg, par)
    parts = {"sup1": s1.detach(), "sup2": s2.detach()}
    if lam == 0:
        return StepOut(s1 + s2, parts, per_net=(s1, s2))
    p = pseudo_labels(nets, batch, cfg, gen, par=par)
    y1, y2 = without(p.void, p.labels.y1, p.labels.y2)
    unsup1, unsup2 = par(lambda k: weighted_ce(nets[k](p.image), (y2, y1)[k]), (0, 1))
    parts.update(unsup1=unsup1.detach(), unsup2=unsup2.detach())
    return StepOut(s1 + s2 + lam * (unsup1 + unsup2), parts, p.labels, p.truth,
                   per_net=(s1 + lam * unsup1, s2 + lam * unsup2))


@registry.register_method("cpcl", nets=2, unlabeled=True)
def cpcl_step(nets, batch, cfg: Config, lam: float, gen: torch.Generator,
              all_reduce=None, par=each) -> StepOut:
    """CPCL: net 1 learns the intersection label, net 2 the union label, each pixel's CE weighted by
    the teachers' confidence; L = CE1 + CE2 + λ(L_inter + L_union)."""
    # 1. Supervised: each net's cross-entropy on the labeled batch.
    s1, s2 = supervised_losses(nets, batch, cfg, par)
    parts = {"sup1": s1.detach(), "sup2": s2.detach()}
    if lam == 0:  # the supervised-only start of the CPU presets: no teacher or student pass
        return StepOut(s1 + s2, parts, per_net=(s1, s2))
    # 2. Teachers: both nets label the students' view (CutMix of u0 and u1) without gradients, and
    #    their two argmax maps give the intersection label, the union label and their weights.
    p = pseudo_labels(nets, batch, cfg, gen, all_reduce, par)
    inter, union = without(p.void, p.labels.inter, p.labels.union)
    # 3. Students: net 1 (conservative) learns the intersection, net 2 (progressive) the union, each
    #    pixel's CE weighted by the teachers' confidence (``targets`` swaps the kinds in ablations).
    target = {"inter": (inter, p.labels.w_inter, cfg.inter_norm), "union": (union, p.labels.w_union, "all")}
    per_pixel = cfg.weight_scope == "pixel"  # "batch": each mean CE scaled by the mean weight

    def student_loss(k):
        label, weight, normalise = target[cfg.targets[k]]
        return weighted_ce(nets[k](p.image), label, weight, normalise=normalise, per_pixel=per_pixel)

    unsup1, unsup2 = par(student_loss, (0, 1))
    parts.update(unsup1=unsup1.detach(), unsup2=unsup2.detach())
    # 4. L = CE1 + CE2 + λ (L_inter + L_union)
    return StepOut(s1 + s2 + lam * (unsup1 + unsup2), parts, p.labels, p.truth,
                   per_net=(s1 + lam * unsup1, s2 + lam * unsup2))


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
