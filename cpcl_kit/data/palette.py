"""The class colours every figure and image of the kit uses: background black, digits tab10
(tab20 + tab20b for more classes, greys swapped out), ignore grey."""

from __future__ import annotations

import numpy as np
import torch

from ..constants import IGNORE_INDEX

IGNORE_GREY = (0.62, 0.62, 0.62)


def class_palette(num_classes: int) -> np.ndarray:
    """[256, 3] RGB in [0, 1]: class 0 black, then tab10 (≤ 11 classes) or tab20 + tab20b colours
    with their greys swapped for gold; 255 (ignore) grey; unused ids white. The same colours in every
    figure of the kit."""
    import matplotlib.pyplot as plt

    pal = np.ones((256, 3))
    pal[0] = 0.0
    cycle = list(plt.get_cmap("tab10").colors) if num_classes <= 11 else \
        list(plt.get_cmap("tab20").colors) + list(plt.get_cmap("tab20b").colors)
    # grey means "ignore / no label": swap the palettes' greys for gold, purple, navy
    spare = iter([(1.0, 0.84, 0.0), (0.5, 0.0, 0.5), (0.0, 0.0, 0.5), (0.6, 0.3, 0.0)])
    cycle = [next(spare) if np.allclose(col, col[0]) else col for col in cycle]
    for c in range(1, min(num_classes, 255)):
        pal[c] = cycle[(c - 1) % len(cycle)]
    pal[IGNORE_INDEX] = IGNORE_GREY
    return pal


def colourise(mask, num_classes: int) -> np.ndarray:
    """[H, W] class ids (255 = ignore) -> [H, W, 3] RGB."""
    m = np.asarray(torch.as_tensor(mask).detach().cpu(), dtype=np.int64)
    return class_palette(num_classes)[np.clip(m, 0, 255)]
