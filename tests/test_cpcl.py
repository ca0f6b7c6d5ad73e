"""Tests for cpcl_kit.method.cpcl: indicator, pseudo-labels, weights, weighted CE, CutMix masks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from cpcl_kit.errors import KitError
from cpcl_kit.method.cpcl import (
    PseudoLabels,
    agreement,
    class_disagreement,
    confusion_between,
    cutmix_box_masks,
    mix,
    pseudo_supervision,
    weighted_ce,
)


def logits_from(labels, confs, num_classes):
    """Logits [1, C, 1, P] whose softmax puts ``conf`` on ``label`` and spreads the rest evenly."""
    cols = []
    for label, conf in zip(labels, confs):
        p = torch.full((num_classes,), (1 - conf) / (num_classes - 1), dtype=torch.float64)
        p[label] = conf
        cols.append(p.log())
    return torch.stack(cols, dim=1)[None, :, None, :].float()


def sklearn_indicator(y1, y2, num_classes):
    """The official recipe: sklearn confusion matrix after appending 0..C-1 to both vectors."""
    extra = np.arange(num_classes)
    n = sk_confusion_matrix(
        np.concatenate([y1.reshape(-1).numpy(), extra]),
        np.concatenate([y2.reshape(-1).numpy(), extra]),
    ).astype(np.float64)
    diag = np.diag(n)
    rows, cols = n.sum(axis=1), n.sum(axis=0)
    ind = (cols - diag) / cols + (rows - diag) / rows
    return ind / (ind.sum() + 1e-6)


# Toy batch (8 pixels, C = 4; class 3 predicted by neither network):
#   y1 = 0 0 0 0 1 1 2 2
#   y2 = 0 0 0 1 1 1 2 0
# pairs (y1, y2): (0,0) x3, (0,1) x1, (1,1) x2, (2,2) x1, (2,0) x1
# N + I = [[4,1,0,0],[0,3,0,0],[1,0,2,0],[0,0,0,1]]
# R (row sums) = 5 3 3 1, K (column sums) = 5 4 2 1, diag = 4 3 2 1
# I0 = 1/5 + 1/5 = 0.4   I1 = 1/4 + 0/3 = 0.25   I2 = 0/2 + 1/3 = 1/3   I3 = 0 + 0 = 0
# Disagreements: pixel 3 (0 vs 1): Ĩ0 > Ĩ1 -> y1 = 0;  pixel 7 (2 vs 0): Ĩ2 < Ĩ0 -> y2 = 0.
Y1 = [0, 0, 0, 0, 1, 1, 2, 2]
Y2 = [0, 0, 0, 1, 1, 1, 2, 0]
C1 = [0.9, 0.8, 0.7, 0.6, 0.5, 0.9, 0.4, 0.7]
C2 = [0.5, 0.6, 0.7, 0.8, 0.9, 0.3, 0.6, 0.5]


def test_indicator_toy_by_hand():
    y1, y2 = torch.tensor(Y1), torch.tensor(Y2)
    ind = class_disagreement(y1, y2, 4)
    raw = torch.tensor([0.4, 0.25, 1 / 3, 0.0], dtype=torch.float64)
    assert ind.dtype == torch.float64
    torch.testing.assert_close(ind, raw / (raw.sum() + 1e-6), rtol=1e-12, atol=0)
    assert ind[3] == 0  # absent from both predictions


def test_confusion_between_and_agreement():
    y1, y2 = torch.tensor(Y1), torch.tensor(Y2)
    expected = torch.tensor([[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(confusion_between(y1, y2, 4), expected)
    assert math.isclose(float(agreement(y1, y2)), 6 / 8)


def test_indicator_matches_sklearn_reference():
    g = torch.Generator().manual_seed(3)
    for c in (2, 5, 21):
        # Correlated labels so that classes have different disagreement rates.
        y1 = torch.randint(0, c, (2, 17, 13), generator=g)
        noise = torch.randint(0, c, y1.shape, generator=g)
        flip = torch.rand(y1.shape, generator=g) < 0.3
        y2 = torch.where(flip, noise, y1)
        y2[y2 == c - 1] = 0  # class c-1 only in y1: exercises K = 1 for it
        ref = sklearn_indicator(y1, y2, c)
        np.testing.assert_allclose(class_disagreement(y1, y2, c).numpy(), ref, rtol=1e-12)


def test_union_and_weights_toy_by_hand():
    t1 = logits_from(Y1, C1, 4)
    t2 = logits_from(Y2, C2, 4)
    ps = pseudo_supervision(t1, t2)
    assert isinstance(ps, PseudoLabels)
    assert ps.y1.flatten().tolist() == Y1 and ps.y2.flatten().tolist() == Y2
    assert ps.agree.flatten().tolist() == [True] * 3 + [False] + [True] * 3 + [False]
    assert ps.inter.flatten().tolist() == [0, 0, 0, 255, 1, 1, 2, 255]
    assert ps.union.flatten().tolist() == [0, 0, 0, 0, 1, 1, 2, 0]
    mean = [(a + b) / 2 for a, b in zip(C1, C2)]
    torch.testing.assert_close(ps.w_inter.flatten(), torch.tensor(mean), atol=1e-6, rtol=0)
    # Disagreement: pixel 3 took y1 -> conf1 = 0.6; pixel 7 took y2 -> conf2 = 0.5.
    expected_union = mean[:3] + [0.6] + mean[4:7] + [0.5]
    torch.testing.assert_close(
        ps.w_union.flatten(), torch.tensor(expected_union), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(ps.conf1.flatten(), torch.tensor(C1), atol=1e-6, rtol=0)


def test_union_tie_in_indicator_goes_to_net2():
    # y1 = 0 0 0 1 1 1, y2 = 0 0 1 1 1 0: N + I = [[3,1,0],[1,3,0],[0,0,1]], R = K = 4 4 1,
    # I0 = I1 = 1/4 + 1/4 = 0.5, I2 = 0 -> equal Ĩ for classes 0 and 1: both disagreeing pixels
    # take y2 (1 at pixel 2, 0 at pixel 5), whichever network is more confident.
    y1, y2 = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0]
    c1, c2 = [0.9, 0.9, 0.95, 0.9, 0.9, 0.95], [0.8, 0.8, 0.4, 0.8, 0.8, 0.4]
    ps = pseudo_supervision(logits_from(y1, c1, 3), logits_from(y2, c2, 3))
    assert ps.indicator[0] == ps.indicator[1]
    assert math.isclose(float(ps.indicator[0]), 0.5 / (1 + 1e-6))
    assert ps.union.flatten().tolist() == y2
    assert torch.allclose(ps.w_union.flatten()[[2, 5]], torch.tensor([0.4, 0.4]))


def test_confidence_rule_and_tie():
    t1 = logits_from(Y1, C1, 4)
    t2 = logits_from(Y2, C2, 4)
    ps = pseudo_supervision(t1, t2, union_rule="confidence")
    # pixel 3: conf 0.6 vs 0.8 -> y2 = 1; pixel 7: 0.7 vs 0.5 -> y1 = 2.
    assert ps.union.flatten().tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert torch.allclose(ps.w_union.flatten()[[3, 7]], torch.tensor([0.8, 0.7]))
    assert ps.inter.flatten().tolist() == [0, 0, 0, 255, 1, 1, 2, 255]
    # Exactly equal confidences ([a, 0] vs [0, a]) -> net 2's label.
    a = 1.7
    tie1 = torch.tensor([a, 0.0]).view(1, 2, 1, 1)
    tie2 = torch.tensor([0.0, a]).view(1, 2, 1, 1)
    tie = pseudo_supervision(tie1, tie2, union_rule="confidence")
    assert tie.conf1 == tie.conf2
    assert tie.union.item() == 1


def test_reweight_false_and_ignore_index():
    t1, t2 = logits_from(Y1, C1, 4), logits_from(Y2, C2, 4)
    ps = pseudo_supervision(t1, t2, reweight=False, ignore_index=-1)
    assert torch.equal(ps.w_inter, torch.ones(1, 1, 8))
    assert torch.equal(ps.w_union, torch.ones(1, 1, 8))
    assert ps.inter.flatten().tolist() == [0, 0, 0, -1, 1, 1, 2, -1]


def test_bad_arguments_raise_kit_error():
    t = torch.randn(1, 3, 2, 2)
    with pytest.raises(KitError, match="union_rule.*disagreement, confidence"):
        pseudo_supervision(t, t, union_rule="vote")
    with pytest.raises(KitError, match="ignore_index"):
        pseudo_supervision(t, t, ignore_index=1)
    with pytest.raises(KitError, match="teacher1/teacher2"):
        pseudo_supervision(t, torch.randn(1, 3, 2, 3))
    with pytest.raises(KitError, match="teacher1"):
        pseudo_supervision(torch.randn(3, 2, 2), t)
    with pytest.raises(KitError, match="num_classes"):
        class_disagreement(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0)
    with pytest.raises(KitError, match="y1"):
        class_disagreement(torch.zeros(3), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(KitError, match="target"):
        weighted_ce(t, torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(KitError, match="size"):
        cutmix_box_masks(2, (0, 4))
    with pytest.raises(KitError, match="area"):
        cutmix_box_masks(2, 8, area=(0.5, 0.25))
    with pytest.raises(KitError, match="mask"):
        mix(t, t, torch.zeros(1, 1, 3, 3))


def test_invariants_on_random_logits():
    g = torch.Generator().manual_seed(0)
    c = 6
    t1 = torch.randn(3, c, 20, 24, generator=g) * 2
    t2 = t1 + torch.randn(3, c, 20, 24, generator=g) * 2  # correlated teachers
    for rule in ("disagreement", "confidence"):
        ps = pseudo_supervision(t1, t2, union_rule=rule)
        valid = ps.inter != 255
        assert torch.equal(valid, ps.agree)
        assert torch.equal(ps.inter[valid], ps.union[valid])
        assert ((ps.union >= 0) & (ps.union < c)).all()
        dis = ~ps.agree
        assert 0 < int(dis.sum()) < dis.numel()
        from_1 = ps.union == ps.y1
        assert (from_1 | (ps.union == ps.y2)).all()
        for w in (ps.w_inter, ps.w_union):
            assert ((w >= 1 / c - 1e-6) & (w <= 1 + 1e-6)).all()
        chosen = torch.where(from_1, ps.conf1, ps.conf2)
        assert torch.equal(ps.w_union[dis], chosen[dis])
        # Independent per-pixel check of the rule.
        ind = ps.indicator.tolist()
        for a, b, u, c1, c2 in zip(
            ps.y1[dis].tolist(), ps.y2[dis].tolist(), ps.union[dis].tolist(),
            ps.conf1[dis].tolist(), ps.conf2[dis].tolist(),
        ):
            first = ind[a] > ind[b] if rule == "disagreement" else c1 > c2
            assert u == (a if first else b)
        assert torch.allclose(ps.conf1, F.softmax(t1, dim=1).amax(dim=1))


def test_weights_carry_no_gradient_and_logits_are_detached():
    t1 = torch.randn(1, 3, 4, 4, requires_grad=True)
    t2 = torch.randn(1, 3, 4, 4, requires_grad=True)
    ps = pseudo_supervision(t1, t2)
    assert not ps.w_inter.requires_grad and not ps.w_union.requires_grad
    student = torch.randn(1, 3, 4, 4, requires_grad=True)
    w = torch.rand(1, 4, 4, requires_grad=True)
    weighted_ce(student, ps.union, w).backward()
    assert student.grad is not None and w.grad is None


def test_weighted_ce_matches_hand_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 1, 2] = 255
    target[1, 0, :] = 255
    weight = torch.rand(2, 3, 5, generator=g)
    total = 0.0
    for b in range(2):
        for i in range(3):
            for j in range(5):
                t = int(target[b, i, j])
                if t == 255:
                    continue
                logp = torch.log_softmax(logits[b, :, i, j].double(), dim=0)[t]
                total += -float(logp) * float(weight[b, i, j])
    expected = total / (2 * 3 * 5)  # all pixels in the denominator, ignored ones too
    assert math.isclose(float(weighted_ce(logits, target, weight)), expected, rel_tol=1e-5)
    unweighted = F.cross_entropy(logits, target, ignore_index=255, reduction="sum") / 30
    assert math.isclose(float(weighted_ce(logits, target)), float(unweighted), rel_tol=1e-5)


def test_half_precision_inputs_give_fp32_results():
    g = torch.Generator().manual_seed(2)
    t1 = torch.randn(2, 5, 6, 7, generator=g).half()
    t2 = torch.randn(2, 5, 6, 7, generator=g).half()
    ps = pseudo_supervision(t1, t2)
    for name in ("conf1", "conf2", "w_inter", "w_union"):
        assert getattr(ps, name).dtype == torch.float32
    assert ps.indicator.dtype == torch.float64
    assert ps.y1.dtype == torch.long and ps.union.dtype == torch.long
    ref = pseudo_supervision(t1.float(), t2.float())
    assert torch.equal(ps.union, ref.union) and torch.equal(ps.w_union, ref.w_union)
    loss = weighted_ce(t1, ps.union, ps.w_union.half())
    assert loss.dtype == torch.float32
    ref_loss = weighted_ce(t1.float(), ps.union, ps.w_union)
    assert math.isclose(float(loss), float(ref_loss), rel_tol=1e-3)


def test_mix_images_logits_and_labels():
    g = torch.Generator().manual_seed(4)
    mask = cutmix_box_masks(2, (8, 9), generator=g)
    a, b = torch.randn(2, 3, 8, 9), torch.randn(2, 3, 8, 9)
    mixed = mix(a, b, mask)
    m = mask.bool().expand_as(a)
    assert torch.equal(mixed[m], b[m]) and torch.equal(mixed[~m], a[~m])
    la, lb = torch.randint(0, 5, (2, 8, 9)), torch.randint(0, 5, (2, 8, 9))
    ml = mix(la, lb, mask)
    assert ml.dtype == torch.long
    assert torch.equal(ml, torch.where(mask[:, 0] == 1, lb, la))
    assert mix(a.half(), b.half(), mask).dtype == torch.float16


def test_cutmix_masks_shape_binary_and_seeded():
    m = cutmix_box_masks(5, (24, 40), generator=torch.Generator().manual_seed(7))
    assert m.shape == (5, 1, 24, 40) and m.dtype == torch.float32
    assert ((m == 0) | (m == 1)).all()
    again = cutmix_box_masks(5, (24, 40), generator=torch.Generator().manual_seed(7))
    assert torch.equal(m, again)
    other = cutmix_box_masks(5, (24, 40), generator=torch.Generator().manual_seed(8))
    assert not torch.equal(m, other)
    assert cutmix_box_masks(2, 16).shape == (2, 1, 16, 16)


def test_cutmix_mixed_fraction_plausible():
    # Three XOR-ed boxes of area U(0.25, 0.5)/3 each: at most 0.5 per mask, ~0.25 on average.
    m = cutmix_box_masks(400, (64, 64), generator=torch.Generator().manual_seed(0))
    frac = m.mean(dim=(1, 2, 3))
    assert 0.2 < float(frac.mean()) < 0.3
    assert float(frac.max()) <= 0.5 + 0.05


def test_cutmix_single_box_area_and_aspect():
    h, w = 60, 80
    m = cutmix_box_masks(300, (h, w), n_boxes=1, generator=torch.Generator().manual_seed(5))
    rows = m[:, 0].amax(dim=2)  # [n, H]: rows the box covers
    cols = m[:, 0].amax(dim=1)  # [n, W]
    # One box, no overlaps: the mask is exactly the filled rectangle rows x cols.
    assert torch.equal(m[:, 0], rows[:, :, None] * cols[:, None, :])
    bh, bw = rows.sum(dim=1), cols.sum(dim=1)
    area = m.mean(dim=(1, 2, 3))
    # Area proportion ~ U(0.25, 0.5) up to rounding of each side (<= half a pixel).
    slack = 0.5 / h + 0.5 / w + 0.01
    assert float(area.min()) >= 0.25 - slack and float(area.max()) <= 0.5 + slack
    assert abs(float(area.mean()) - 0.375) < 0.02
    # Height proportion exp(U·ln a) lies in [a, 1].
    hp = bh / h
    assert bool((hp >= area - slack).all()) and bool((hp <= 1).all())
    # Boxes stay inside and are not always at the same place.
    assert len({int(r.nonzero()[0]) for r in rows}) > 5
    assert bool((bw >= 1).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    t1 = torch.randn(2, 5, 32, 32, device="cuda").half()
    t2 = torch.randn(2, 5, 32, 32, device="cuda").half()
    mask = cutmix_box_masks(2, 32).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mixed = mix(t1, t2, mask)
        ps = pseudo_supervision(mixed, t2)
        loss = weighted_ce(mixed, ps.inter, ps.w_inter) + weighted_ce(mixed, ps.union, ps.w_union)
        agreement(ps.y1, ps.y2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.dtype == torch.float32
    ref = sklearn_indicator(ps.y1.cpu(), ps.y2.cpu(), 5)
    np.testing.assert_allclose(ps.indicator.cpu().numpy(), ref, rtol=1e-12)


def test_first_release_weights_and_normaliser_match_its_formula():
    """weight_scope="batch" + normalise="labeled" + per_pixel=False is the official code's first
    release (June 2022): CE averaged over labeled pixels, times one confidence per teacher and
    batch, max(softmax(logits, dim=-1)) -- a softmax over the *width* axis."""
    g = torch.Generator().manual_seed(3)
    t1, t2 = torch.randn(2, 4, 5, 6, generator=g) * 3, torch.randn(2, 4, 5, 6, generator=g) * 3
    student1, student2 = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    ps = pseudo_supervision(t1, t2, weight_scope="batch")
    # the first release, written out from its train.py
    w1, w2 = torch.max(F.softmax(t1, dim=-1)), torch.max(F.softmax(t2, dim=-1))
    y1, y2 = t1.argmax(1), t2.argmax(1)
    ce = torch.nn.CrossEntropyLoss(reduction="mean", ignore_index=255)
    inter = torch.where(y1 == y2, y1, torch.full_like(y1, 255))
    ref_inter = torch.mean(ce(student1, inter) * (w1 + w2) / 2)
    take = torch.where(ps.indicator[y1] > ps.indicator[y2], w1, w2)
    ref_union = torch.mean(ce(student2, ps.union) * torch.where(y1 == y2, (w1 + w2) / 2, take))
    got_inter = weighted_ce(student1, ps.inter, ps.w_inter, normalise="labeled", per_pixel=False)
    got_union = weighted_ce(student2, ps.union, ps.w_union, per_pixel=False)
    assert torch.allclose(got_inter, ref_inter, atol=1e-6) and torch.allclose(got_union, ref_union, atol=1e-6)
    assert torch.allclose(ps.w_inter, ((w1 + w2) / 2).expand(2, 5, 6))  # one value everywhere


def test_normalisers_and_scopes_by_hand():
    logits = torch.zeros(1, 2, 1, 4)  # CE = log 2 on every pixel
    target = torch.tensor([[[0, 1, 255, 255]]])
    w = torch.tensor([[[1.0, 0.5, 0.9, 0.9]]])
    ln2 = math.log(2)
    assert weighted_ce(logits, target, w) == pytest.approx(1.5 * ln2 / 4)  # over all 4 pixels
    assert weighted_ce(logits, target, w, normalise="labeled") == pytest.approx(1.5 * ln2 / 2)
    assert weighted_ce(logits, target, w, normalise="labeled", per_pixel=False) == pytest.approx(ln2 * 0.825)
    with pytest.raises(KitError, match="normalise"):
        weighted_ce(logits, target, w, normalise="some")
    with pytest.raises(KitError, match="weight_scope"):
        pseudo_supervision(logits, logits, weight_scope="image")
