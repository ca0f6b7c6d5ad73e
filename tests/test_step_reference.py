"""The kit's training step equals one iteration written out flat, as the paper's algorithm and the
official code read (docs/method.md §2–§5): supervised CE, teachers without gradients, the students'
view, intersection and union labels by the disagreement indicator, confidence-weighted CE, one
backward, one optimizer step per net. Bit for bit, over several iterations, for every method and for
the paper's and the CPU presets' views: a refactoring that moves any arithmetic fails here."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cpcl_kit import registry
from cpcl_kit.config import make_config
from cpcl_kit.engine.synthetic import synthetic_batch
from cpcl_kit.engine.trainer import Trainer, lr_at
from cpcl_kit.method.cpcl import class_disagreement, cutmix_box_masks, mix
from cpcl_kit.method.perturb import outside, random_affine, warp

IGNORE = 255
ITERATIONS = 3


def ce(logits, target):
    return F.cross_entropy(logits.float(), target, reduction="none", ignore_index=IGNORE).mean()


def reference_iteration(nets, opts, batch, cfg, it: int, lam: float) -> torch.Tensor:
    for opt in opts:
        for g in opt.param_groups:
            g["lr"] = lr_at(it, cfg)
        opt.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
    # 1. supervised
    sup = [F.cross_entropy(net(batch.x_l).float(), batch.y_l, ignore_index=IGNORE) for net in nets]
    if len(nets) == 1:
        loss = sup[0]
    else:
        # 2. the students' view and the teachers' logits on it
        b, _, h, w = batch.u0.shape
        void = None
        with torch.no_grad():
            if cfg.cutmix_boxes:  # the paper: 3 boxes, BatchNorm in train mode, one pass per image batch
                mask = cutmix_box_masks(b, (h, w), n_boxes=cfg.cutmix_boxes, generator=gen)
                teachers = [mix(net(batch.u0), net(batch.u1), mask) for net in nets]
                image = mix(batch.u0, batch.u1, mask)
            else:  # the CPU presets: u0 warped, eval-mode teachers
                teachers = []
                for net in nets:
                    net.eval()
                    teachers.append(net(batch.u0))
                    net.train()
                theta = random_affine(b, generator=gen)
                void = outside(theta, (h, w))
                teachers = [warp(t, theta, padding="border") for t in teachers]
                image = warp(batch.u0, theta)
        # 3. pseudo labels
        z1, z2 = teachers[0].float(), teachers[1].float()
        y1, y2 = z1.argmax(1), z2.argmax(1)
        c1, c2 = torch.softmax(z1, 1).amax(1), torch.softmax(z2, 1).amax(1)
        agree = y1 == y2
        if registry.method(cfg.method).name == "cps":
            targets, weights = (y2, y1), (None, None)
        else:
            ind = class_disagreement(y1, y2, cfg.num_classes)
            take1 = ind[y1] > ind[y2]
            inter = torch.where(agree, y1, torch.full_like(y1, IGNORE))
            union = torch.where(take1, y1, y2)
            w_inter = (c1 + c2) / 2
            w_union = torch.where(agree, w_inter, torch.where(take1, c1, c2))
            targets, weights = (inter, union), (w_inter, w_union)
        if void is not None:
            targets = tuple(t.masked_fill(void, IGNORE) for t in targets)
        # 4. students
        unsup = []
        for net, target, weight in zip(nets, targets, weights):
            per_pixel = F.cross_entropy(net(image).float(), target, reduction="none", ignore_index=IGNORE)
            unsup.append((per_pixel if weight is None else per_pixel * weight).mean())
        loss = sup[0] + sup[1] + lam * (unsup[0] + unsup[1])
    loss.backward()
    for opt in opts:
        opt.step()
    return loss


RECIPES = {"paper_view": dict(cutmix_boxes=3, student_aug="none", teacher_bn="train"),
           "cpu_view": dict(cutmix_boxes=0, student_aug="affine", teacher_bn="eval")}


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("method", registry.method_names())
def test_the_step_is_the_flat_iteration_bit_for_bit(method, recipe):
    if registry.method(method).nets == 1 and recipe != "paper_view":
        pytest.skip("one net: no students' view")
    cfg = make_config("smoke", method=method, crop=32, head_channels=8, net_threads=False, device="cpu",
                      **RECIPES[recipe])
    kit = Trainer.create(cfg, torch.device("cpu"))
    ref = Trainer.create(cfg, torch.device("cpu"))  # the same seeded init, its own optimizers
    for it in range(ITERATIONS):
        batch = synthetic_batch(dataclasses.replace(cfg), torch.device("cpu"), seed=it)
        out = kit.step(registry.method(method).step, batch, it, lam=1.0)
        loss = reference_iteration(ref.nets, ref.opts, batch, cfg, it, lam=1.0)
        assert torch.equal(out.loss.detach(), loss.detach()), it
    for a, b in zip(kit.nets, ref.nets):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    for a, b in zip(kit.opts, ref.opts):
        for sa, sb in zip(a.state_dict()["state"].values(), b.state_dict()["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
