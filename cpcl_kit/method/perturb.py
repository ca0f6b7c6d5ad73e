"""A student view that keeps the object whole: a random affine warp (not in the official recipe).

The official student sees the CutMix image its teachers labeled, pixel for pixel. On the digit
scenes a CutMix box can cut the scene's one digit into fragments whose class the student cannot
name (benchmarks/README round 4), while without mixing the student sees exactly its teachers' input
and only learns to repeat them. ``student_aug="affine"`` gives the student the same scene rotated,
scaled and shifted, and warps the teachers' logits with it, so the pseudo label still sits on the
pixel it names: a perturbation that changes every pixel yet keeps the digit's identity (a digit is
still a digit when turned by 15 degrees). Pure tensor functions; randomness only from ``generator``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX

# The warp's ranges: rotation in degrees (±), isotropic scale, shift as a fraction of the side (±).
# Chosen so a 40-56 px digit of a 64 px scene stays almost whole and keeps its identity (no flips).
AFFINE_RANGES = {"rotate": 15.0, "scale": (0.85, 1.1), "shift": 0.08}


def random_affine(n: int, generator: torch.Generator | None = None, rotate: float = AFFINE_RANGES["rotate"],
                  scale: tuple[float, float] = AFFINE_RANGES["scale"],
                  shift: float = AFFINE_RANGES["shift"]) -> torch.Tensor:
    """``n`` random affine matrices, float32 [n, 2, 3] on the CPU, for ``F.affine_grid``.

    Each maps an output pixel's normalised coordinates (-1..1) to the input's: a rotation by
    U(-rotate, rotate) degrees, a scale s ~ U(scale) (s > 1 shows the scene larger), a shift by
    U(-shift, shift) of the side in each direction. Four draws per sample from ``generator``.
    """
    d = torch.rand((4, n), generator=generator, dtype=torch.float64)
    angle = math.radians(rotate) * (2 * d[0] - 1)
    s = scale[0] + (scale[1] - scale[0]) * d[1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    tx, ty = 2 * shift * (2 * d[2] - 1), 2 * shift * (2 * d[3] - 1)  # normalised coords span 2
    theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)
    return theta.to(torch.float32)


def _grid(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.affine_grid(theta.to(x.device, torch.float32), [x.shape[0], 1, *x.shape[-2:]],
                         align_corners=False)


def warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Float maps [B, K, H, W] (images, logits) warped by ``theta`` [B, 2, 3], bilinear, in x's dtype.

    ``padding="zeros"``: pixels from outside the scene are 0 (for normalised images: the mean
    colour, as the official loader pads); ``"border"``: the nearest edge value (logits, so every
    pixel still has an argmax; ``outside`` says which to ignore)."""
    out = F.grid_sample(x.float(), _grid(theta, x), mode="bilinear", padding_mode=padding,
                        align_corners=False)
    return out.to(x.dtype)


def outside(theta: torch.Tensor, size, device=None) -> torch.Tensor:
    """bool [B, H, W]: True where the warped view samples from outside the scene (no label there)."""
    ones = torch.ones(theta.shape[0], 1, *size, device=device)
    inside = F.grid_sample(ones, _grid(theta, ones), mode="nearest", padding_mode="zeros",
                           align_corners=False)
    return inside[:, 0] < 0.5


def warp_labels(y: torch.Tensor, theta: torch.Tensor, off: torch.Tensor | None = None) -> torch.Tensor:
    """Label maps [B, H, W] (int64) warped by ``theta``, nearest; IGNORE_INDEX outside the scene.
    ``off``: ``outside(theta, ...)`` when the caller has it already (else computed here)."""
    out = F.grid_sample(y[:, None].float(), _grid(theta, y), mode="nearest", padding_mode="zeros",
                        align_corners=False)[:, 0].round().long()
    off = outside(theta, y.shape[-2:], y.device) if off is None else off
    return out.masked_fill(off, IGNORE_INDEX)
