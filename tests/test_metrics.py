"""Tests for cpcl_kit.engine.metrics against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from cpcl_kit.engine.metrics import confusion_matrix, iou_from_confusion, pixel_accuracy
from cpcl_kit.errors import KitError

# 3 classes, 8 pixels (class 2 appears in neither target nor prediction):
#   target = 0 0 0 1 1 1 255 7
#   pred   = 0 0 1 1 1 0 2   2
# The last two pixels are skipped (ignore label, out of range).
# cm (rows target, cols pred) = [[2,1,0],[1,2,0],[0,0,0]]
# IoU0 = 2/(2+1+1) = 0.5, IoU1 = 2/(2+1+1) = 0.5, IoU2 = 0/0 = NaN -> mIoU 0.5; acc = 4/6.
TARGET = torch.tensor([[0, 0, 0, 1], [1, 1, 255, 7]])
PRED = torch.tensor([[0, 0, 1, 1], [1, 0, 2, 2]])


def test_confusion_by_hand():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == torch.long
    assert cm.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]


def test_iou_and_accuracy_by_hand():
    iou, miou = iou_from_confusion(confusion_matrix(PRED, TARGET, 3))
    assert iou.dtype == torch.float64
    assert iou[:2].tolist() == [0.5, 0.5] and math.isnan(iou[2])
    assert miou == 0.5 and isinstance(miou, float)
    assert math.isclose(pixel_accuracy(confusion_matrix(PRED, TARGET, 3)), 4 / 6)


def test_asymmetric_iou_by_hand():
    # cm [[3,1],[2,0]]: IoU0 = 3/(3+1+2) = 0.5, IoU1 = 0/(0+2+1) = 0 -> mIoU 0.25; acc 3/6.
    cm = torch.tensor([[3, 1], [2, 0]])
    iou, miou = iou_from_confusion(cm)
    assert iou.tolist() == [0.5, 0.0] and miou == 0.25
    assert pixel_accuracy(cm) == 0.5


def test_against_sklearn():
    g = torch.Generator().manual_seed(0)
    c = 6
    target = torch.randint(0, c, (3, 20, 30), generator=g)
    target[target == 4] = 255  # class 4 never in the target
    pred = torch.randint(0, c, target.shape, generator=g)
    pred[pred == 5] = 1  # class 5 never predicted
    cm = confusion_matrix(pred, target, c)
    keep = (target != 255).flatten().numpy()
    t, p = target.flatten().numpy()[keep], pred.flatten().numpy()[keep]
    np.testing.assert_array_equal(cm.numpy(), sk_confusion_matrix(t, p, labels=list(range(c))))
    iou, miou = iou_from_confusion(cm)
    present = [k for k in range(c) if (t == k).any() or (p == k).any()]
    ref = jaccard_score(t, p, labels=present, average=None)
    np.testing.assert_allclose(iou[present].numpy(), ref, rtol=1e-12)
    assert math.isclose(miou, float(ref.mean()), rel_tol=1e-12)
    assert math.isclose(pixel_accuracy(cm), float((t == p).mean()))


def test_empty_and_all_absent():
    cm = confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 255), 3)
    assert int(cm.sum()) == 0
    iou, miou = iou_from_confusion(cm)
    assert torch.isnan(iou).all() and math.isnan(miou)
    assert math.isnan(pixel_accuracy(cm))


def test_custom_ignore_index_and_uint8():
    target = torch.tensor([0, 1, 2, 1], dtype=torch.uint8)
    pred = torch.tensor([0, 1, 1, 1], dtype=torch.uint8)
    assert confusion_matrix(pred, target, 3, ignore_index=2).tolist() == [
        [1, 0, 0],
        [0, 2, 0],
        [0, 0, 0],
    ]


def test_bad_input_raises_kit_error():
    with pytest.raises(KitError, match="pred/target"):
        confusion_matrix(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2
        )
    with pytest.raises(KitError, match="pred"):
        confusion_matrix(torch.zeros(4), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(KitError, match="num_classes"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 0)
    with pytest.raises(KitError, match=r"pred: expected class ids in \[0, 2\)"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 2)
    # An out-of-range prediction on a skipped pixel is fine.
    assert confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 255]), 2).sum() == 1
    with pytest.raises(KitError, match="cm"):
        iou_from_confusion(torch.zeros(2, 3))
    with pytest.raises(KitError, match="cm"):
        pixel_accuracy(torch.zeros(4))
