"""Outlines of label maps: the pixels within a few px of another label.

One function for three uses: the void outline the digit scenes draw round their digits (as VOC's masks
have round their objects), the band CPCL may leave without pseudo label round the teachers' outlines
(``pseudo_void_band``), and the edge pixels the disagreement analysis sets apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import KitError


def boundary_band(labels: torch.Tensor, band: int) -> torch.Tensor:
    """bool [B, H, W]: the pixels with another label within ``band`` px (a (2·band+1)² square).

    labels: integer label maps [B, H, W] (any integer dtype, any device). The band of width
    ``band`` on each side of every outline between two labels: the void outline VOC draws round its
    objects (and the digit scenes with ``void_band``), here drawn on pseudo labels. Pixels beyond the
    image border do not count, so the border is no outline. ``band=0``: no pixel.
    """
    if isinstance(band, bool) or not isinstance(band, int) or band < 0:
        raise KitError(f"band: expected an int >= 0, got {band!r}")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise KitError(f"labels: expected an integer label tensor, got {got}")
    if labels.dim() != 3:
        raise KitError(f"labels: expected [B, H, W], got {tuple(labels.shape)}")
    if band == 0:
        return torch.zeros_like(labels, dtype=torch.bool)
    # A window holds another label than its centre exactly when its max and min differ; max pooling
    # pads with -inf, so pixels beyond the border never take part. Label ids < 2**24 are exact in fp32.
    x = labels.unsqueeze(1).to(torch.float32)
    k = 2 * band + 1
    hi = F.max_pool2d(x, k, stride=1, padding=band)
    lo = -F.max_pool2d(-x, k, stride=1, padding=band)
    return (hi != lo).squeeze(1)
