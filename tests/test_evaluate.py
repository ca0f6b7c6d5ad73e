"""Tests for cpcl_kit.engine.evaluate with tiny dummy models (no real network needed)."""

import math

import pytest
import torch
from torch import nn

from cpcl_kit.engine.evaluate import evaluate, predict_logits, window_starts
from cpcl_kit.errors import KitError


class Recorder(nn.Module):
    """Wraps a function of the input; records input shapes and the training flag per call."""

    def __init__(self, fn=None, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.bn = nn.BatchNorm2d(num_classes)
        self.fn = fn
        self.calls = []

    def forward(self, x):
        self.calls.append((tuple(x.shape), self.training))
        return self.fn(x) if self.fn is not None else self.conv(x)


def identity_model():
    # Logits = the image itself (3 classes): shows exactly where padding and windows go.
    return Recorder(lambda x: x.clone())


def window_count(length, crop, stride):
    count = torch.zeros(length)
    for s in window_starts(length, crop, stride):
        count[s : s + crop] += 1
    return count


def test_window_starts():
    # stride ceil(32·2/3) = 22: rows 40 -> ceil(8/22)+1 = 2 windows, cols 90 -> ceil(58/22)+1 = 4.
    assert window_starts(40, 32, 22) == [0, 8]
    assert window_starts(90, 32, 22) == [0, 22, 44, 58]
    assert window_starts(32, 32, 22) == [0]
    # Cityscapes: 1024 x 2048, crop 800, stride 534 -> 2 x 4 = 8 windows.
    assert len(window_starts(1024, 800, 534)) * len(window_starts(2048, 800, 534)) == 8


def test_sliding_window_count_and_shapes_40x90():
    model = identity_model()
    image = torch.randn(2, 3, 40, 90)
    out = predict_logits(model, image, crop=32, num_classes=3)
    assert len(model.calls) == 8
    assert all(shape == (2, 3, 32, 32) for shape, _ in model.calls)
    # Summed logits: each pixel gets its own value times the number of windows covering it.
    count = window_count(40, 32, 22)[:, None] * window_count(90, 32, 22)[None, :]
    torch.testing.assert_close(out, image * count)


def test_sliding_window_matches_whole_image_for_1x1_model():
    torch.manual_seed(0)
    model = Recorder(num_classes=5)
    model.conv = nn.Conv2d(3, 5, 1)
    image = torch.randn(1, 3, 50, 70)
    whole = predict_logits(model, image, num_classes=5)
    slid = predict_logits(model, image, crop=32, stride_ratio=0.5, num_classes=5)
    count = window_count(50, 32, 16)[:, None] * window_count(70, 32, 16)[None, :]
    torch.testing.assert_close(slid, whole * count)
    assert torch.equal(slid.argmax(dim=1), whole.argmax(dim=1))


def test_small_image_padded_once_and_unpadded():
    model = identity_model()
    image = torch.randn(1, 3, 20, 25)
    out = predict_logits(model, image, crop=32, num_classes=3)
    assert [shape for shape, _ in model.calls] == [(1, 3, 32, 32)]
    assert torch.equal(out, image)  # padding removed exactly, content not shifted


def test_padding_is_centred_zeros():
    model = identity_model()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    image = torch.ones(1, 3, 20, 25)
    predict_logits(model, image, crop=32, num_classes=3)
    padded = seen[0][0, 0]
    # 12 rows of padding: 6 above, 6 below; 7 columns: 3 left, 4 right.
    assert padded[6:26, 3:28].eq(1).all() and padded.sum() == 20 * 25
    assert padded[5].eq(0).all() and padded[:, 2].eq(0).all() and padded[:, 28].eq(0).all()


def test_long_side_over_crop_with_short_side_padded():
    model = identity_model()
    image = torch.randn(1, 3, 20, 90)  # rows padded to 32, then 1 x 4 windows
    out = predict_logits(model, image, crop=32, num_classes=3)
    assert len(model.calls) == 4
    torch.testing.assert_close(out, image * window_count(90, 32, 22)[None, :])


def test_ensemble_averages_softmax():
    torch.manual_seed(1)
    m1, m2 = Recorder(num_classes=4), Recorder(num_classes=4)
    m1.conv, m2.conv = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
    image = torch.randn(2, 3, 9, 11)
    out = predict_logits([m1, m2], image, num_classes=4)
    with torch.no_grad():
        m1.eval(), m2.eval()
        ref = (m1.conv(image).softmax(1) + m2.conv(image).softmax(1)) / 2
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 9, 11))
    # Windows: probabilities summed per window.
    slid = predict_logits((m1, m2), image, crop=8, num_classes=4)
    count = window_count(9, 8, 6)[:, None] * window_count(11, 8, 6)[None, :]
    torch.testing.assert_close(slid, ref * count)


def test_eval_mode_inference_and_flags_restored():
    model = identity_model()
    model.train()
    model.bn.eval()  # a deliberately mixed state must come back as it was
    out = predict_logits(model, torch.randn(1, 3, 8, 8), num_classes=3)
    assert model.calls[0][1] is False
    assert torch.is_inference(out)
    assert model.training and model.conv.training and not model.bn.training


def test_flags_restored_after_error():
    model = Recorder(lambda x: x[:, :2])  # wrong number of classes
    model.train()
    with pytest.raises(KitError, match="models: expected logits of shape"):
        predict_logits(model, torch.randn(1, 3, 8, 8), num_classes=3)
    assert model.training and model.bn.training


def test_predict_logits_bad_arguments():
    model = identity_model()
    image = torch.randn(1, 3, 8, 8)
    with pytest.raises(KitError, match="crop"):
        predict_logits(model, image, crop=0, num_classes=3)
    with pytest.raises(KitError, match="stride_ratio"):
        predict_logits(model, image, crop=4, stride_ratio=0, num_classes=3)
    with pytest.raises(KitError, match="image"):
        predict_logits(model, torch.randn(3, 8, 8), num_classes=3)
    with pytest.raises(KitError, match="models"):
        predict_logits([], image, num_classes=3)


def onehot_image(mask):
    """Image whose channel k is 1 where mask == k (ignored pixels look like class 0)."""
    m = mask.clone()
    m[m == 255] = 0
    return torch.nn.functional.one_hot(m, 3).permute(2, 0, 1).float()


def test_evaluate_perfect_predictor():
    g = torch.Generator().manual_seed(0)
    masks = [torch.randint(0, 3, s, generator=g) for s in [(6, 7), (6, 7), (6, 7), (5, 9), (5, 9)]]
    masks[0][0, :] = 255
    data = [(onehot_image(m), m) for m in masks]
    model = identity_model()
    res = evaluate(model, data, 3, batch_size=2, progress=False)
    assert res["miou"] == 1.0 and res["pixel_acc"] == 1.0
    assert res["per_class_iou"] == [1.0, 1.0, 1.0]
    cm = res["confusion"]
    assert cm.dtype == torch.long and cm.device.type == "cpu"
    assert int(cm.sum()) == sum(int((m != 255).sum()) for m in masks)
    # Consecutive equal sizes are batched, at most 2 at a time: [A, A], [A], [B, B].
    assert [shape[0] for shape, _ in model.calls] == [2, 1, 2]


def test_evaluate_batches_by_pixels_by_default():
    """No batch size given: as many images as the pixel budget holds, at most 64 (a CPU preset's
    64x64 scenes), 4 Cityscapes frames, at least one of anything larger."""
    from cpcl_kit.engine.evaluate import EVAL_PIXELS, MAX_EVAL_BATCH, auto_batch

    assert auto_batch(64, 64) == MAX_EVAL_BATCH == 64
    assert auto_batch(1024, 2048) == 4 and auto_batch(512, 512) == EVAL_PIXELS // 512**2 > 4
    assert auto_batch(8192, 8192) == 1
    g = torch.Generator().manual_seed(0)
    masks = [torch.randint(0, 3, (4, 4), generator=g) for _ in range(70)] + [torch.randint(0, 3, (2048, 1024), generator=g)]
    model = identity_model()
    res = evaluate(model, [(onehot_image(m), m) for m in masks], 3, progress=False)
    assert [shape[0] for shape, _ in model.calls] == [64, 6, 1] and res["miou"] == 1.0


def test_evaluate_constant_predictor_by_hand():
    # Masks hold 6 pixels of class 0, 3 of class 1, 3 of class 2 (and 4 ignored); the model
    # always says 0: IoU0 = 6 / 12 = 0.5, IoU1 = IoU2 = 0 -> mIoU 1/6; accuracy 6/12.
    m1 = torch.tensor([[0, 0, 1, 255], [2, 2, 0, 255]])
    m2 = torch.tensor([[0, 0, 0, 1], [1, 2, 255, 255]])
    data = [(torch.zeros(3, 2, 4), m1), (torch.zeros(3, 2, 4), m2)]
    favour_0 = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    const = Recorder(lambda x: favour_0.expand(x.shape[0], 3, *x.shape[-2:]))
    res = evaluate(const, data, 3, crop=3, progress=True)
    assert res["per_class_iou"] == [0.5, 0.0, 0.0]
    assert math.isclose(res["miou"], 1 / 6) and res["pixel_acc"] == 0.5
    assert res["confusion"].tolist() == [[6, 0, 0], [3, 0, 0], [3, 0, 0]]


def test_evaluate_absent_class_is_nan_and_ensemble_accepted():
    mask = torch.tensor([[0, 1], [1, 0]])
    data = [(onehot_image(mask), mask)]
    res = evaluate([identity_model(), identity_model()], data, 3, progress=False)
    assert res["per_class_iou"][:2] == [1.0, 1.0] and math.isnan(res["per_class_iou"][2])
    assert res["miou"] == 1.0


def test_evaluate_bad_dataset_items():
    with pytest.raises(KitError, match="dataset"):
        evaluate(identity_model(), [(torch.zeros(3, 4, 4), torch.zeros(4, 5))], 3, progress=False)
    with pytest.raises(KitError, match="batch_size"):
        evaluate(identity_model(), [], 3, batch_size=0, progress=False)


@pytest.mark.parametrize("crop", [None, 8, 12])
def test_branches_from_one_pass_equal_three_evaluations(crop):
    """evaluate(branches=True): each net's and the ensemble's confusion matrix, bit for bit those of
    three separate evaluations, with each net run once per batch and window (counted by a hook);
    whole images, padded ones and sliding windows."""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
            for _ in range(2)]
    data = [(torch.randn(3, 10, 20), torch.randint(0, 4, (10, 20))) for _ in range(6)]
    calls = []
    for k, net in enumerate(nets):
        net.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
    both = evaluate(nets, data, 4, crop=crop, batch_size=4, progress=False, branches=True)
    assert calls.count(0) == calls.count(1) == len(calls) // 2
    one_pass = len(calls) // 2
    calls.clear()
    alone = {"1": evaluate(nets[0], data, 4, crop=crop, batch_size=4, progress=False),
             "2": evaluate(nets[1], data, 4, crop=crop, batch_size=4, progress=False),
             "ensemble": evaluate(nets, data, 4, crop=crop, batch_size=4, progress=False)}
    assert calls.count(0) == 2 * one_pass
    assert list(both) == ["1", "2", "ensemble"]
    for k in alone:
        assert torch.equal(both[k]["confusion"], alone[k]["confusion"]), k
        assert both[k]["miou"] == alone[k]["miou"]
