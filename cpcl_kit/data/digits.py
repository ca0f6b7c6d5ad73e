"""Embedded "digit scenes": a tiny offline segmentation data set built from scikit-learn's digits.

Each scene is an RGB square with a few upscaled, thickened digits of random colour over a smooth
random background. Classes: 0 = background, 1..10 = digits 0..9 (``DIGIT_CLASS_NAMES``). Train and
validation scenes draw their digits from disjoint pools of the 1,797 8x8 source images, so a val
score measures generalisation to unseen handwriting, not memorised strokes. A third pool
(``pretrain_pool``, 35 %) is held out of every scene for backbone pretraining (``pretrain.py``).

Generation is pure numpy and deterministic: the same (n, spec, pool, seed) gives bit-identical
arrays. 1,000 default 64x64 scenes (about 70 % background pixels) take about 0.9 s on one
CPU core.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..constants import IGNORE_INDEX, cache_root
from ..errors import KitError
from ..files import write_atomic
from .outlines import boundary_band

DIGIT_CLASS_NAMES = ["background"] + [str(d) for d in range(10)]
NUM_DIGIT_CLASSES = len(DIGIT_CLASS_NAMES)
# Pools are always split with this seed so that train and val never share a source digit,
# whatever scene seeds the user picks.
POOL_SEED = 0
POOL_VAL_FRACTION = 0.3
# Share of each label kept out of every scene for backbone pretraining (the "ImageNet" of the
# embedded data); train and val are split from the rest.
POOL_PRETRAIN_FRACTION = 0.35
# Bump when the generator changes so stale .npz caches are not reused.
# 2: the pretraining pool is taken out first, so the train/val pools hold other digits.
GENERATOR_VERSION = 2

# sklearn digits are 0..16 intensities; a stroke is where the bilinear upscale exceeds this.
_STROKE_THRESHOLD = 7.0
# Candidate positions tried per digit; the one overlapping existing digits least is kept,
# which keeps occlusion moderate without forbidding it.
_POSITION_TRIES = 8


@dataclass(frozen=True)
class SceneSpec:
    """Knobs of the scene generator.

    size: side of the square scene in px. digits: (min, max) digits per scene, inclusive.
    digit_px: (min, max) upscaled digit height in px; width is 0.75-1.0 x height (never flipped).
    stroke: extra dilation radius of the stroke in px (0 = thresholded upscale only).
    noise: std of the Gaussian pixel noise, in [0, 1] intensity units.
    void: px of "void" (255, ignored by losses and metrics) on each side of every outline between two
    labels, as PASCAL VOC marks its object boundaries (``void_band``); 0 = none.
    """

    size: int = 64
    digits: tuple[int, int] = (2, 3)
    digit_px: tuple[int, int] = (32, 44)
    stroke: int = 1
    noise: float = 0.06
    void: int = 0

    def check(self) -> None:
        """Raise KitError on an impossible spec."""
        lo, hi = self.digits
        if self.size < 8:
            raise KitError(f"SceneSpec.size: expected >= 8 px, got {self.size}")
        if not 0 <= lo <= hi:
            raise KitError(f"SceneSpec.digits: expected 0 <= min <= max, got {self.digits}")
        plo, phi = self.digit_px
        if not 8 <= plo <= phi <= self.size:
            raise KitError(
                f"SceneSpec.digit_px: expected 8 <= min <= max <= size={self.size}, got {self.digit_px}"
            )
        if self.stroke < 0 or self.noise < 0:
            raise KitError(f"SceneSpec.stroke/noise: expected >= 0, got {self.stroke}, {self.noise}")
        if not 0 <= self.void <= 4:
            raise KitError(f"SceneSpec.void: expected 0 to 4 px, got {self.void}")


@functools.lru_cache(maxsize=1)
def load_digit_bank() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 sklearn digits: (images float32 [N,8,8] in 0..16, labels int64 [N] in 0..9)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def _split_pools(seed: int, val_fraction: float, pretrain_fraction: float):
    """(train, val, pretrain) sorted int64 index arrays into the digit bank, stratified by label.

    Each label's images are shuffled once: the first round(count * pretrain_fraction) go to
    pretraining, then round(rest * val_fraction) of the rest to val, the remainder to train.
    """
    if not 0.0 < val_fraction < 1.0:
        raise KitError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    if not 0.0 <= pretrain_fraction < 1.0:
        raise KitError(f"pretrain_fraction: expected a number in [0, 1), got {pretrain_fraction}")
    _, labels = load_digit_bank()
    rng = np.random.default_rng(seed)
    train, val, pre = [], [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        p = int(round(len(idx) * pretrain_fraction))
        pre.append(idx[:p])
        rest = idx[p:]
        k = int(round(len(rest) * val_fraction))
        val.append(rest[:k])
        train.append(rest[k:])
    return tuple(np.sort(np.concatenate(part)) for part in (train, val, pre))


def digit_pools(seed: int = POOL_SEED, val_fraction: float = POOL_VAL_FRACTION,
                pretrain_fraction: float = POOL_PRETRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train_pool, val_pool) index arrays into the digit bank, stratified by digit label.

    Both are split from the digits left after ``pretrain_pool`` is taken out; each label keeps
    round(rest * val_fraction) of those for val. Both arrays are sorted int64.
    """
    train, val, _ = _split_pools(seed, val_fraction, pretrain_fraction)
    return train, val


def pretrain_pool(seed: int = POOL_SEED, val_fraction: float = POOL_VAL_FRACTION,
                  pretrain_fraction: float = POOL_PRETRAIN_FRACTION) -> np.ndarray:
    """Sorted int64 indices of the digits that no scene uses (disjoint from both ``digit_pools``)."""
    return _split_pools(seed, val_fraction, pretrain_fraction)[2]


def upscale(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of one [8,8] image to [h,w] (half-pixel centres, edge clamped)."""
    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(c).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (c - i0).astype(np.float32)

    y0, y1, fy = axis(h, img.shape[0])
    x0, x1, fx = axis(w, img.shape[1])
    rows = img[y0] * (1 - fy)[:, None] + img[y1] * fy[:, None]  # [h, 8]
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def dilate(m: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of [h,w] bool by a disc of radius r px; output grows by r on each side."""
    if r <= 0:
        return m
    h, w = m.shape
    out = np.zeros((h + 2 * r, w + 2 * r), bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r + r:  # r*r + r gives a rounder disc than r*r
                out[r + dy : r + dy + h, r + dx : r + dx + w] |= m
    return out


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """[n,size,size,3] float32 in [0,1]: a linear two-colour gradient plus two soft colour blobs."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    t = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
    t = (t - t.min(axis=(1, 2), keepdims=True)) / np.ptp(t, axis=(1, 2), keepdims=True)
    c0, c1 = rng.uniform(0, 1, (2, n, 1, 1, 3)).astype(np.float32)
    bg = c0 + t[..., None] * (c1 - c0)
    for _ in range(2):
        cy, cx = rng.uniform(0, 1, (2, n, 1, 1)).astype(np.float32)
        sigma = rng.uniform(0.1, 0.35, (n, 1, 1)).astype(np.float32)
        alpha = rng.uniform(0.3, 0.8, (n, 1, 1)).astype(np.float32)
        colour = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
        wgt = (alpha * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))[..., None]
        bg = bg * (1 - wgt) + colour * wgt
    return bg


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour in [0,1] at least ~0.45 (L2) away from the mean colour `under` [3]."""
    c = rng.uniform(0, 1, 3).astype(np.float32)
    if np.linalg.norm(c - under) < 0.45:
        # Push each channel to the far side of the background so the digit stays visible.
        far = rng.uniform(0, 0.3, 3).astype(np.float32)
        c = np.where(under > 0.5, far, 1 - far)
    return c


def make_scenes(
    n: int, spec: SceneSpec, pool: Sequence[int], seed: int | Sequence[int],
    bank: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate n scenes: (images uint8 [n,S,S,3] RGB, masks uint8 [n,S,S] in 0..10).

    Masks are 255 (void) in the band ``spec.void`` around every outline.
    pool: indices into the bank that digits are drawn from. seed: int or tuple of ints
    for ``np.random.default_rng``. A later digit overwrites earlier ones (image and mask), so digits
    may be partly occluded. Mask = digit label + 1 where the digit's thickened stroke is on, else 0.
    bank: (images float32 [N,8,8] in 0..16, labels int64 [N] in 0..9) to draw from instead of
    ``load_digit_bank()`` (pretraining renders augmented or printed digits this way).
    """
    spec.check()
    if n < 0:
        raise KitError(f"n: expected >= 0 scenes, got {n}")
    pool = np.asarray(pool, dtype=np.int64)
    bank, labels = load_digit_bank() if bank is None else bank
    if pool.size == 0 or pool.min() < 0 or pool.max() >= len(bank):
        raise KitError(f"pool: expected a non-empty array of indices in [0, {len(bank)})")
    rng = np.random.default_rng(seed)
    s, r = spec.size, spec.stroke
    images = _backgrounds(rng, n, s)
    masks = np.zeros((n, s, s), np.uint8)
    counts = rng.integers(spec.digits[0], spec.digits[1] + 1, n)
    for i in range(n):
        img, msk = images[i], masks[i]
        for _ in range(counts[i]):
            k = pool[rng.integers(len(pool))]
            # Dilation adds r px per side, so shrink the upscale to keep the final size in range.
            h = int(rng.integers(spec.digit_px[0], spec.digit_px[1] + 1))
            w = int(round(h * rng.uniform(0.75, 1.0)))
            stroke = dilate(upscale(bank[k], h - 2 * r, max(w - 2 * r, 4)) > _STROKE_THRESHOLD, r)
            if not stroke.any():  # a faint digit drawn small (pretraining warps): nothing to draw
                continue
            sh, sw = stroke.shape
            ys = rng.integers(0, s - sh + 1, _POSITION_TRIES)
            xs = rng.integers(0, s - sw + 1, _POSITION_TRIES)
            overlap = [np.count_nonzero(msk[y : y + sh, x : x + sw][stroke]) for y, x in zip(ys, xs)]
            y, x = ys[int(np.argmin(overlap))], xs[int(np.argmin(overlap))]
            box_img = img[y : y + sh, x : x + sw]
            box_img[stroke] = _contrasting_colour(rng, box_img[stroke].mean(axis=0))
            msk[y : y + sh, x : x + sw][stroke] = labels[k] + 1
    if spec.noise > 0:
        images += rng.normal(0, spec.noise, images.shape).astype(np.float32)
    # after all digits: the outlines of the final masks (the image border is no outline)
    masks[boundary_band(torch.from_numpy(masks), spec.void).numpy()] = IGNORE_INDEX
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8), masks


@functools.cache
def _generator_source() -> str:
    """A digest of the code that draws the scenes (this module and the outlines), part of every cache
    key: a changed generator makes new cache files, never reads the old ones' scenes."""
    from . import outlines

    code = b"".join(Path(m.__file__).read_bytes() for m in (sys.modules[__name__], outlines))
    return hashlib.sha1(code).hexdigest()[:16]


def _cache_key(split: str, n: int, spec: SceneSpec, seed: int) -> str:
    blob = json.dumps([GENERATOR_VERSION, _generator_source(), split, n, dataclasses.asdict(spec), seed],
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


_MEMORY_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def default_cache_dir() -> Path | None:
    """Where the kit's data sets keep the scenes they make (``scenes/`` in the kit's cache,
    ``constants.cache_root``), so that each notebook kernel and grid worker reads them instead of
    drawing them again; None where there is no home folder for a cache."""
    try:
        return cache_root() / "scenes"
    except RuntimeError:  # HOME unset and no passwd entry
        return None


def _scenes_for(split: str, n: int, spec: SceneSpec, seed: int, cache_dir: str | Path | None):
    key = _cache_key(split, n, spec, seed)
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = Path(cache_dir) / f"digits_{split}_{n}_{key}.npz" if cache_dir is not None else None
    arrays = None
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                arrays = z["images"], z["masks"]
            if arrays[0].shape[0] != n or arrays[1].shape != arrays[0].shape[:3]:
                raise ValueError("shapes")
        except Exception:  # noqa: BLE001 - a damaged file (truncated zip, bad CRC): made again
            arrays = None
            print(f"cpcl-kit: the cached scenes {path} are damaged; generating them again",
                  file=sys.stderr, flush=True)
    if arrays is None:
        train_pool, val_pool = digit_pools()
        pool = train_pool if split == "train" else val_pool
        # Mix the split into the seed so train and val scenes differ in layout, not only in digits.
        arrays = make_scenes(n, spec, pool, (seed, 0 if split == "train" else 1))
        if path is not None:  # atomically: concurrent readers never see a half-written file
            try:  # uncompressed: the backgrounds' noise shrinks by a quarter at 15x the time
                write_atomic(path, lambda f: np.savez(f, images=arrays[0], masks=arrays[1]))
            except KitError:  # a cache that cannot be written (no folder, read-only, full): drawn next time
                pass
    _MEMORY_CACHE[key] = arrays
    return arrays


class DigitScenes(Dataset):
    """Digit scenes as a segmentation data set; items are ``transform(Image uint8 [3,S,S], Mask int64 [S,S])``.

    split: "train" or "val" (disjoint digit pools). n: number of scenes. transform defaults to
    ``transforms.val_transform()`` (float, ImageNet-normalised). Scenes are generated once per process
    (memory cache) and, when cache_dir is given, stored there as .npz keyed by (split, n, spec, seed).
    ``.images`` [n,S,S,3] uint8 and ``.masks`` [n,S,S] uint8 hold the raw arrays for plotting.
    """

    num_classes = NUM_DIGIT_CLASSES
    class_names = DIGIT_CLASS_NAMES

    def __init__(
        self,
        split: str = "train",
        n: int = 1000,
        spec: SceneSpec = SceneSpec(),
        seed: int = 0,
        transform: Callable | None = None,
        cache_dir: str | Path | None = None,
    ):
        if split not in ("train", "val"):
            raise KitError(f"split: expected 'train' or 'val', got {split!r}")
        if n < 1:
            raise KitError(f"n: expected at least 1 scene, got {n}")
        if transform is None:
            from .transforms import val_transform

            transform = val_transform()
        self.split, self.n, self.spec, self.seed, self.transform = split, n, spec, seed, transform
        self.images, self.masks = _scenes_for(split, n, spec, seed, cache_dir)

    def __len__(self) -> int:
        return self.n

    def raw(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Scene i before the transform: (Image uint8 [3,S,S], Mask int64 [S,S])."""
        image = tv_tensors.Image(torch.from_numpy(self.images[i]).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(self.masks[i]).long())
        return image, mask

    def __getitem__(self, i: int):
        return self.transform(*self.raw(i))
