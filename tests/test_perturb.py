"""The affine student view (perturb.py): warps checked against exact pixel moves done by hand."""

import math

import numpy as np
import torch

from cpcl_kit.config import make_config
from cpcl_kit.constants import IGNORE_INDEX
from cpcl_kit.method.perturb import AFFINE_RANGES, outside, random_affine, warp, warp_labels
from cpcl_kit.method.variants import warp_view, without

QUARTER_TURN = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])


def shift(px: int, size: int) -> torch.Tensor:
    """An output pixel (r, c) samples the input at (r, c + px)."""
    return torch.tensor([[[1.0, 0.0, 2.0 * px / size], [0.0, 1.0, 0.0]]])


def test_random_affine_is_seeded_and_stays_in_its_ranges():
    a = random_affine(500, torch.Generator().manual_seed(3))
    assert a.shape == (500, 2, 3) and a.dtype == torch.float32
    assert torch.equal(a, random_affine(500, torch.Generator().manual_seed(3)))
    lin = a[:, :, :2].double()
    scale = 1 / lin.det().sqrt()  # each matrix is a rotation divided by the scale
    angle = torch.rad2deg(torch.atan2(lin[:, 1, 0], lin[:, 0, 0]))
    lo, hi = AFFINE_RANGES["scale"]
    assert lo - 1e-5 <= scale.min() and scale.max() <= hi + 1e-5 and scale.std() > 0.05
    assert angle.abs().max() <= AFFINE_RANGES["rotate"] + 1e-4 and angle.abs().max() > 10
    assert a[:, :, 2].abs().max() <= 4 * AFFINE_RANGES["shift"] + 1e-6  # normalised coordinates span 2


def test_an_integer_shift_moves_labels_and_voids_what_came_from_outside():
    y = torch.randint(0, 11, (1, 8, 8))
    out = warp_labels(y, shift(2, 8))
    expected = np.full((1, 8, 8), IGNORE_INDEX)
    expected[:, :, :6] = y[:, :, 2:].numpy()
    assert np.array_equal(out.numpy(), expected)
    assert outside(shift(2, 8), (8, 8)).sum() == 16
    x = torch.randn(1, 3, 8, 8)
    moved = warp(x, shift(2, 8))
    assert torch.allclose(moved[..., :6], x[..., 2:], atol=1e-6) and (moved[..., 6:] == 0).all()
    border = warp(x, shift(2, 8), padding="border")
    assert torch.allclose(border[..., 6:], x[..., 7:].expand(-1, -1, -1, 2), atol=1e-6)


def test_a_quarter_turn_equals_rot90_for_images_and_labels():
    y, x = torch.randint(0, 11, (1, 7, 7)), torch.randn(1, 2, 7, 7)
    assert torch.equal(warp_labels(y, QUARTER_TURN), torch.rot90(y, 1, (1, 2)))
    assert torch.allclose(warp(x, QUARTER_TURN), torch.rot90(x, 1, (2, 3)), atol=1e-5)
    assert not outside(QUARTER_TURN, (7, 7)).any()


def test_student_view_warps_image_teachers_and_truth_alike():
    u = torch.randn(4, 3, 16, 16)
    t = [torch.randn(4, 5, 16, 16) for _ in "12"]
    truth = torch.randint(0, 5, (4, 16, 16))
    same = warp_view(make_config("smoke"), torch.Generator(), u, t, truth)
    assert same[0] is u and same[1] is t and same[2] is truth and same[3] is None
    view, (w1, w2), wtruth, void = warp_view(make_config("smoke", student_aug="affine"),
                                                 torch.Generator().manual_seed(0), u, t, truth)
    theta = random_affine(4, torch.Generator().manual_seed(0))
    assert torch.allclose(view, warp(u, theta)) and torch.allclose(w1, warp(t[0], theta, "border"))
    assert torch.equal(wtruth, warp_labels(truth, theta)) and torch.equal(void, wtruth == IGNORE_INDEX)
    assert 0 < void.float().mean() < 0.3
    (target,) = without(void, torch.zeros(4, 16, 16, dtype=torch.long))
    assert torch.equal(target == IGNORE_INDEX, void)
    assert math.isfinite(float(w2.mean()))
