"""A small folder data set (--dataset folder) that tests build: images of different sizes with a
coloured square of class 1 or 2 on each, some with masks, optionally a val/ folder."""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["background", "square", "disc"]


def make_tree(root: Path, n: int = 12, masked: int = 8, val: int = 0, classes=CLASSES) -> Path:
    """n images of different sizes, a coloured square of class 1 or 2 on each; the first `masked`
    have masks; `val` more images with masks under val/ (none: no val folder)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")

    def one(images: Path, masks: Path | None, name: str, c: int) -> None:
        h, w = (int(v) for v in rng.integers(70, 100, 2))
        img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        m = np.zeros((h, w), np.uint8)
        y, x = (int(v) for v in rng.integers(5, 30, 2))
        m[y:y + 30, x:x + 30] = c
        img[m == c] = (200, 50, 50) if c == 1 else (50, 200, 50)
        Image.fromarray(img).save(images / f"{name}.png")
        if masks is not None:
            Image.fromarray(m).save(masks / f"{name}.png")

    for i in range(n):
        one(root / "images", root / "masks" if i < masked else None, f"im{i:02d}", 1 + i % 2)
    if val:
        (root / "val" / "images").mkdir(parents=True)
        (root / "val" / "masks").mkdir()
        for i in range(val):
            one(root / "val" / "images", root / "val" / "masks", f"v{i:02d}", 1 + i % 2)
    return root
