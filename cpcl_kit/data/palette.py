"""The class colours every figure and image of the kit uses: background black, digits tab10
(tab20 + tab20b for more classes, greys swapped out), ignore grey; and PASCAL VOC's own colour map,
for label PNGs a VOC tool reads as its own."""

from __future__ import annotations

import numpy as np
import torch

from .. import registry
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


def voc_palette() -> np.ndarray:
    """PASCAL VOC's colour map, uint8 [256, 3] RGB: the one its label PNGs carry (1 aeroplane
    (128, 0, 0), 15 person (192, 128, 128), 255 void (224, 224, 192)).

    The devkit's bit interleaving: bits 0, 1, 2 of the class id are the top bits of red, green and
    blue, bits 3, 4, 5 the next ones, and so on, so neighbouring ids get far-apart colours.
    """
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):  # from the top bit of each channel down
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        pal[i] = rgb
    return pal


def palette_for(dataset: str, num_classes: int) -> np.ndarray:
    """uint8 [256, 3] RGB colours of the class ids of ``dataset``'s label images: the data set's own
    colour map where it has one (VOC's, so its tools show them as usual), else the kit's
    ``class_palette``."""
    own = registry.dataset(dataset).palette
    if own is not None:
        return own()
    return np.round(class_palette(num_classes) * 255).astype(np.uint8)
