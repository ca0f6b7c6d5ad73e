"""data.outlines.boundary_band, the one band of pixels near another label that the digit scenes' void
outline, CPCL's pseudo_void_band and the disagreement analysis' edges all use."""

import numpy as np
import pytest
import torch

from cpcl_kit.data.outlines import boundary_band
from cpcl_kit.errors import KitError
from cpcl_kit.teach.disagreement import edge_mask


def band_by_loop(masks: np.ndarray, r: int) -> np.ndarray:
    """An independent reference: each pixel against every pixel of its (2r+1)² square inside the image."""
    n, h, w = masks.shape
    out = np.zeros(masks.shape, bool)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                win = masks[b, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
                out[b, y, x] = bool((win != masks[b, y, x]).any())
    return out


def test_band_by_hand():
    m = torch.zeros(1, 5, 6, dtype=torch.long)
    m[0, 1:3, 2:4] = 7  # a 2x2 block
    ring = boundary_band(m, 1)[0]
    assert ring.sum() == 16 and ring[0:4, 1:5].all()  # the block and its 1-px ring: a 4x4 square
    assert not ring[4].any() and not ring[:, 0].any() and not ring[:, 5].any()
    assert not boundary_band(m, 0).any() and boundary_band(m, 3).all()
    assert not boundary_band(torch.full((2, 4, 4), 3), 2).any()  # one label: no outline, border included
    edge = torch.zeros(1, 4, 4, dtype=torch.uint8)
    edge[0, :, :2] = 7  # a label touching the image border: only the inner outline
    assert boundary_band(edge, 1)[0].tolist() == [[False, True, True, False]] * 4


@pytest.mark.parametrize("band", [1, 2, 3])
def test_band_equals_the_loop_on_random_maps(band):
    g = torch.Generator().manual_seed(band)
    y = torch.randint(0, 3, (3, 9, 11), generator=g).repeat_interleave(2, dim=1)[:, :12]
    y[0, :4] = 255  # the ignore value is one more label here
    assert np.array_equal(boundary_band(y, band).numpy(), band_by_loop(y.numpy(), band))
    assert boundary_band(y.to(torch.uint8), band).equal(boundary_band(y, band))
    known = y != 255
    assert edge_mask(y, band).equal(boundary_band(y, band) & known)


def test_bad_arguments_are_one_line():
    m = torch.zeros(1, 5, 6, dtype=torch.long)
    with pytest.raises(KitError, match="band: expected an int >= 0, got -1"):
        boundary_band(m, -1)
    with pytest.raises(KitError, match="labels: expected an integer label tensor"):
        boundary_band(m.float(), 1)
    with pytest.raises(KitError, match=r"labels: expected \[B, H, W\], got \(5, 6\)"):
        boundary_band(m[0], 1)
