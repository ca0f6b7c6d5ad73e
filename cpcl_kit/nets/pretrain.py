"""A pretrained backbone for the embedded digit scenes, playing the role of ImageNet.

The CPU presets cannot download ImageNet weights, and a ResNet from random init learns little in a
few hundred CPU steps. So the kit pretrains the backbone itself, on a digit *classification* task
whose images share no source image with any scene (train or val):

* ``handwritten``: the ``digits.pretrain_pool()`` digits (35 % of sklearn's 1,797, never in a scene),
  each image an affine + elastic warp of its 8x8 source;
* ``printed``: digits rendered with the TrueType fonts that matplotlib ships, reduced to 8x8 like the
  handwritten source (a different domain, as ImageNet is for VOC), warped the same way;
* ``mixed``: both.

Every image is one digit (or none: an 11th "no digit" class) drawn into a 64x64 scene by the kit's
own scene code, so colours, backgrounds, upscaling and stroke match the segmentation data. The
classifier is a plain torchvision ResNet (stride 32, as ImageNet training) with a linear layer on the
pooled layer4 features; only the backbone is kept, in torchvision's key layout.

``weights_path(spec)`` returns the state dict file of a spec: the one shipped with the kit
(``cpcl_kit/weights/``) when there is one, else the cached file in the kit's cache
(``default_cache_dir``: ``~/.cache/cpcl-kit/pretrain`` or ``$CPCL_KIT_CACHE/pretrain``), keyed by a
hash of the spec and ``PRETRAIN_VERSION``, trained (with a progress bar) when missing or damaged. A config
asks for it with ``backbone_weights="digits"`` (``resolve_backbone_weights``).

Why a file is shipped: pretraining is deterministic on one kind of CPU only. Another CPU sums floats
in another order, the 400 steps drift apart, and the same spec gives other weights (a different
sha256, a few points of digit accuracy apart). Every run of the CPU presets then starts elsewhere,
and results stop repeating across machines. So the presets' spec is trained once and its file ships
with the kit (``SHIPPED``); ``python -m cpcl_kit pretrain --rebuild`` trains it again on this machine
and says whether the file came out the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import files, registry
from ..limits import PRETRAIN_MAX_IMAGES, check_pretrain_memory, pretrain_images
from ..constants import CACHE_ENV, PRETRAIN_SOURCES, cache_root
from ..data import digits
from ..errors import KitError

# Bump when images, augmentation or training change, so stale cached weights are not reused.
PRETRAIN_VERSION = 1
SOURCES = PRETRAIN_SOURCES  # "handwritten", "printed", "mixed"
# The value of Config.backbone_weights that asks for this module's cached backbone.
NAMED_WEIGHTS = "digits"
# The cache folder of trained backbones; None: the kit's cache (default_cache_dir), read at each call.
DEFAULT_CACHE_DIR: Path | None = None
# Backbones shipped with the kit, named as in the cache (``weights_name``), each with its report.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
# Classes as in the scene masks: 0 = no digit, 1..10 = digits 0..9.
NUM_CLASSES = digits.NUM_DIGIT_CLASSES
# Pretraining runs with this many torch threads whatever the caller uses: another thread count sums
# floats in another order and gives other weights, and the cache is keyed by the spec alone. One
# thread costs nothing measurable at these sizes.
PRETRAIN_THREADS = 1
# Share of each source's digits (handwritten: of the pretraining pool) kept for the held-out score.
HELDOUT_FRACTION = 0.15
# Most distinct training images (defined with the settings, whose memory checks count them).
MAX_IMAGES = PRETRAIN_MAX_IMAGES
# matplotlib fonts that map '0'..'9' to other symbols (cmex10, cmsy10) or draw old-style figures
# that no handwritten digit resembles (cmmi10). Fonts without digit glyphs are dropped by rendering.
_NOT_DIGIT_FONTS = ("cmex10", "cmsy10", "cmmi10")
# Every 7th usable font (sorted by name, from the 4th) is held out of printed training.
_HELDOUT_FONT_EVERY, _HELDOUT_FONT_FIRST = 7, 3
# Bitmap side of a printed glyph before it is reduced to 8x8 by 4x4 block counts (0..16), as the
# sklearn digits were made from 32x32 bitmaps.
_GLYPH_PX = 32
_IMAGES_PER_CHUNK = 1000  # make_scenes holds float32 copies: generate in chunks to bound memory


@dataclass(frozen=True)
class PretrainSpec:
    """Everything that decides the pretrained weights (and so the cache key).

    source: one of ``SOURCES``. backbone: a ``deeplab.BACKBONES`` name. size: side of the square
    images in px (digits 0.5-0.69 of it, as in the default scenes). steps, batch, lr, weight_decay:
    AdamW with a cosine decay. images: distinct training images (each seen about steps*batch/images
    times). eval_images: images per accuracy (held-out own pool, scene digits). no_digit: add an
    11th class, an image without digit (1 in 11 images). seed: every random draw.
    """

    source: str = "handwritten"
    backbone: str = "resnet18_w16"
    size: int = 64
    steps: int = 600
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    images: int = MAX_IMAGES
    eval_images: int = 2000
    no_digit: bool = True
    seed: int = 0

    def check(self) -> None:
        """Raise KitError naming the first impossible field."""
        from .deeplab import BACKBONES

        if self.source not in SOURCES:
            raise KitError(f"pretrain_source: unknown {self.source!r}, expected one of {', '.join(SOURCES)}")
        if self.backbone not in BACKBONES:
            raise KitError(f"backbone: unknown {self.backbone!r}, expected one of {', '.join(BACKBONES)}")
        if not isinstance(self.size, int) or self.size < 16:
            raise KitError(f"pretrain_size: expected at least 16 px, got {self.size!r}")
        for name in ("steps", "images", "eval_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise KitError(f"pretrain {name}: expected a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.batch, int) or self.batch < 2:  # BatchNorm needs 2 images
            raise KitError(f"pretrain batch: expected an integer >= 2, got {self.batch!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise KitError(f"pretrain lr/weight_decay: expected lr > 0 and weight_decay >= 0, "
                           f"got {self.lr}, {self.weight_decay}")
        check_pretrain_memory(self.size, self.batch, self.images)


# ------------------------------------------------------------------------------------------------
# source digits: 8x8 images in 0..16, like sklearn's


@dataclass
class Bank:
    """8x8 source digits: images float32 [N,8,8] in 0..16, labels int64 [N] in 0..9, origin int64 [N]
    (index into ``digits.load_digit_bank()``, or -1 for a printed glyph)."""

    images: np.ndarray
    labels: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(banks: list["Bank"]) -> "Bank":
        return Bank(*(np.concatenate([getattr(b, f) for b in banks]) for f in ("images", "labels", "origin")))


def printed_fonts() -> list[Path]:
    """matplotlib's bundled TrueType fonts that draw ten distinct, non-empty digits, sorted by name."""
    import matplotlib

    fonts = []
    for path in sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf")):
        if path.stem in _NOT_DIGIT_FONTS:
            continue
        glyphs = [_glyph_bitmap(path, str(d), 0) for d in range(10)]
        if all(g.any() for g in glyphs) and len({g.tobytes() for g in glyphs}) == 10:
            fonts.append(path)
    if not fonts:
        raise KitError("pretrain_source: no matplotlib font draws the digits, so 'printed' cannot be built")
    return fonts


def _glyph_bitmap(font_path: Path, char: str, thicken: int) -> np.ndarray:
    """bool [32,32]: ``char`` drawn in the font, scaled to the full height (width by its aspect,
    at least half the side, as handwritten digits are rarely narrow), centred, dilated ``thicken`` px."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), 96)
    x0, y0, x1, y1 = font.getbbox(char)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((_GLYPH_PX, _GLYPH_PX), bool)
    canvas = Image.new("L", (x1 - x0, y1 - y0))
    ImageDraw.Draw(canvas).text((-x0, -y0), char, fill=255, font=font)
    m = _GLYPH_PX - 2 * thicken  # leave room for the dilation
    w = int(np.clip(round(m * (x1 - x0) / (y1 - y0)), m // 2, m))
    small = np.asarray(canvas.resize((w, m), Image.Resampling.BILINEAR)) > 127
    out = np.zeros((m, m), bool)
    out[:, (m - w) // 2 : (m - w) // 2 + w] = small
    return digits.dilate(out, thicken)


def printed_bank(fonts: list[Path]) -> Bank:
    """Digits 0..9 of each font at two stroke widths (the thinner matches the handwritten digits' ink
    share, 31 % vs 32 % of pixels above the stroke threshold), reduced to 8x8 block counts (0..16)."""
    images, labels = [], []
    for path in fonts:
        for d in range(10):
            for thicken in (0, 1):
                g = _glyph_bitmap(path, str(d), thicken)
                images.append(g.reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.float32))
                labels.append(d)
    n = len(labels)
    return Bank(np.stack(images), np.array(labels, np.int64), np.full(n, -1, np.int64))


def handwritten_bank(part: str) -> Bank:
    """The pretraining pool's digits, ``part`` "train" or "heldout" (HELDOUT_FRACTION per label)."""
    images, labels = digits.load_digit_bank()
    pool = digits.pretrain_pool()
    rng = np.random.default_rng(digits.POOL_SEED)  # fixed like the pools: not a training knob
    held = []
    for d in range(10):
        idx = rng.permutation(pool[labels[pool] == d])
        held.append(idx[: int(round(len(idx) * HELDOUT_FRACTION))])
    held = np.concatenate(held)
    chosen = np.sort(held if part == "heldout" else np.setdiff1d(pool, held))
    return Bank(images[chosen], labels[chosen], chosen)


def source_bank(source: str, part: str) -> Bank:
    """The source digits of a pretraining ``source`` (see ``SOURCES``); ``part`` "train" or "heldout"
    (held-out handwritten digits, or held-out fonts). Never contains a scene digit."""
    if part not in ("train", "heldout"):
        raise KitError(f"part: expected 'train' or 'heldout', got {part!r}")
    if source not in SOURCES:
        raise KitError(f"pretrain_source: unknown {source!r}, expected one of {', '.join(SOURCES)}")
    banks = []
    if source in ("handwritten", "mixed"):
        banks.append(handwritten_bank(part))
    if source in ("printed", "mixed"):
        fonts = printed_fonts()
        held = [i % _HELDOUT_FONT_EVERY == _HELDOUT_FONT_FIRST for i in range(len(fonts))]
        banks.append(printed_bank([f for f, h in zip(fonts, held) if h == (part == "heldout")]))
    return Bank.concat(banks)


def distort_digits(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random affine + elastic warp and stroke gain of 8x8 digits: float32 [n,8,8] -> [n,8,8] in 0..16.

    Affine: rotation ±15°, shear ±0.3, scale 0.85-1.1 per axis, shift ±0.5 px. Elastic: a 3x3 grid
    of N(0, 0.4 px) displacements, upscaled bilinearly. Peaks are lifted to at least 10, then a gain
    x0.8-1.4 (clipped): since strokes are where the upscale exceeds 7, it varies their width.
    Bilinear sampling, zero outside.
    """
    n = len(images)
    c = 3.5
    rot = np.deg2rad(rng.uniform(-15, 15, n))
    shear = rng.uniform(-0.3, 0.3, n)
    sy, sx = rng.uniform(0.85, 1.1, (2, n))
    ty, tx = rng.uniform(-0.5, 0.5, (2, n))
    # Output -> input coordinates: rotation @ shear, divided by the scale (zooming in samples less).
    cos, sin = np.cos(rot), np.sin(rot)
    a = np.stack([np.stack([cos, -sin + cos * shear], -1), np.stack([sin, cos + sin * shear], -1)], -2)
    a = a / np.stack([sy, sx], -1)[:, :, None]
    yy, xx = np.mgrid[0:8, 0:8].astype(np.float64) - c
    ys = a[:, 0, 0, None, None] * yy + a[:, 0, 1, None, None] * xx + c + ty[:, None, None]
    xs = a[:, 1, 0, None, None] * yy + a[:, 1, 1, None, None] * xx + c + tx[:, None, None]
    grid = rng.normal(0, 0.4, (n, 2, 3, 3)).astype(np.float32)
    ys += np.stack([digits.upscale(g[0], 8, 8) for g in grid])
    xs += np.stack([digits.upscale(g[1], 8, 8) for g in grid])
    out = _bilinear(images, ys, xs)
    # Resampling lowers peaks; keep every digit's peak above the stroke threshold so that no warp
    # leaves an empty stroke (an image that would silently become the "no digit" class).
    out *= np.maximum(1.0, 10.0 / np.maximum(out.max(axis=(1, 2), keepdims=True), 1e-6))
    out *= rng.uniform(0.8, 1.4, (n, 1, 1))
    return np.clip(out, 0, 16).astype(np.float32)


def _bilinear(images: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample [n,8,8] images at float coordinates ys, xs [n,8,8]; zero outside the 8x8 square."""
    pad = np.pad(images, ((0, 0), (1, 1), (1, 1)))  # the zero border is what "outside" reads
    ys, xs = np.clip(ys + 1, 0, 9), np.clip(xs + 1, 0, 9)
    y0, x0 = np.minimum(np.floor(ys), 8).astype(np.int64), np.minimum(np.floor(xs), 8).astype(np.int64)
    fy, fx = ys - y0, xs - x0
    i = np.arange(len(images))[:, None, None]
    return (pad[i, y0, x0] * (1 - fy) * (1 - fx) + pad[i, y0 + 1, x0] * fy * (1 - fx)
            + pad[i, y0, x0 + 1] * (1 - fy) * fx + pad[i, y0 + 1, x0 + 1] * fy * fx)


# ------------------------------------------------------------------------------------------------
# classification images


def image_spec(size: int, n_digits: int) -> digits.SceneSpec:
    """Scene spec of a one-digit (or empty) image: digit height 32-44 px per 64, scaled to ``size``."""
    lo, hi = max(8, round(32 * size / 64)), max(8, round(44 * size / 64))
    return digits.SceneSpec(size=size, digits=(n_digits, n_digits), digit_px=(lo, hi))


def render(bank: Bank, n: int, size: int, seed, augment: bool, no_digit: bool) -> tuple[np.ndarray, np.ndarray]:
    """n one-digit images drawn from ``bank``: (images uint8 [n,S,S,3], labels int64 [n] in 0..10).

    Each image's digit is a random bank entry (warped when ``augment``), drawn by
    ``digits.make_scenes``. The label is read from the image's mask (0 = no stroke on: "no digit"),
    so it is always what the image shows. With ``no_digit``, 1 in 11 images is empty. The order is
    shuffled. seed: anything ``np.random.default_rng`` takes, e.g. a tuple.
    """
    rng = np.random.default_rng(seed)
    n_empty = int(round(n / NUM_CLASSES)) if no_digit else 0
    pick = rng.integers(len(bank), size=n - n_empty)
    src = distort_digits(bank.images[pick], rng) if augment else bank.images[pick]
    images, labels = [], []
    for c0 in range(0, n, _IMAGES_PER_CHUNK):
        chunk = list(range(c0, min(n, c0 + _IMAGES_PER_CHUNK)))
        # The first len(pick) images show a digit, each drawn from this chunk's warped digits.
        full = [i for i in chunk if i < len(pick)]
        if full:
            im, m = digits.make_scenes(len(full), image_spec(size, 1), np.arange(len(full)),
                                       seed=(*np.atleast_1d(seed), 1, c0),
                                       bank=(src[full], bank.labels[pick[full]]))
            images.append(im)
            labels.append(m.reshape(len(full), -1).max(axis=1))
        empty = len(chunk) - len(full)
        if empty:
            im, m = digits.make_scenes(empty, image_spec(size, 0), [0], seed=(*np.atleast_1d(seed), 2, c0))
            images.append(im)
            labels.append(np.zeros(empty, np.uint8))
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    order = rng.permutation(n)
    return images[order], labels[order]


def scene_digit_images(size: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n one-digit images of the handwritten *scene* digits (train + val pools), unwarped: the
    transfer test. (images uint8 [n,S,S,3], labels int64 [n] in 1..10)."""
    images, labels = digits.load_digit_bank()
    pool = np.concatenate(digits.digit_pools())
    bank = Bank(images[pool], labels[pool], pool)
    return render(bank, n, size, (seed, 3), augment=False, no_digit=False)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n,S,S,3] -> float32 [n,3,S,S], ImageNet-normalised like ``transforms.val_transform``."""
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------------
# training


def build_classifier(backbone: str) -> nn.Module:
    """A torchvision-layout ResNet (``deeplab.resnet``, random init from torch's global RNG) whose fc
    predicts ``NUM_CLASSES``."""
    from .deeplab import resnet

    return resnet(backbone, NUM_CLASSES)


@torch.no_grad()
def accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    """Share of ``images`` (uint8 [n,S,S,3]) whose argmax class is ``labels`` [n], in eval mode."""
    was = net.training
    net.eval()
    hits = 0
    for i in range(0, len(labels), batch):
        pred = net(to_tensor(images[i : i + batch])).argmax(1).numpy()
        hits += int((pred == labels[i : i + batch]).sum())
    net.train(was)
    return hits / max(1, len(labels))


def cosine_lr(step: int, spec: PretrainSpec) -> float:
    """Linear warm-up over the first 5 % of steps, then a cosine decay to zero."""
    warm = max(1, spec.steps // 20)
    if step < warm:
        return spec.lr * (step + 1) / warm
    return spec.lr * 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, spec.steps - warm)))


def train_backbone(spec: PretrainSpec, progress: bool = True) -> tuple[dict, dict]:
    """Train the classifier of ``spec``; returns (backbone state dict without fc.*, report dict).

    Deterministic for one spec on one kind of CPU: it trains with ``PRETRAIN_THREADS`` threads
    whatever the caller's setting (restored afterwards). torch's global RNG is left as found.
    The report holds both accuracies (``heldout_acc``: held-out images of the spec's own source;
    ``scene_digit_acc``: the handwritten scene digits), steps, final loss and seconds.
    """
    spec.check()
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _train_backbone(spec, progress)
    finally:
        torch.set_num_threads(threads)


def _train_backbone(spec: PretrainSpec, progress: bool) -> tuple[dict, dict]:
    t0, cpu0 = time.perf_counter(), time.process_time()
    train_bank = source_bank(spec.source, "train")
    x, y = render(train_bank, spec.images, spec.size, (spec.seed, 0), True, spec.no_digit)
    t_data = time.perf_counter() - t0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        net = build_classifier(spec.backbone)
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        rng = np.random.default_rng((spec.seed, 4))
        order = np.empty(0, np.int64)
        losses = []
        with tqdm(total=spec.steps, desc=f"pretrain {spec.source}", disable=not progress,
                  dynamic_ncols=True) as bar:
            for step in range(spec.steps):
                if len(order) < spec.batch:  # a new epoch: every image once, in a fresh order
                    order = np.concatenate([order, rng.permutation(len(y))])
                idx, order = order[: spec.batch], order[spec.batch :]
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(step, spec)
                loss = F.cross_entropy(net(to_tensor(x[idx])), torch.from_numpy(y[idx]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                if step % 10 == 0 or step == spec.steps - 1:
                    bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
                bar.update(1)
    t_train = time.perf_counter() - t0 - t_data
    del x, y
    held = render(source_bank(spec.source, "heldout"), spec.eval_images, spec.size, (spec.seed, 5),
                  True, spec.no_digit)
    scene = scene_digit_images(spec.size, spec.eval_images, spec.seed)
    report = {
        "heldout_acc": accuracy(net, *held), "scene_digit_acc": accuracy(net, *scene),
        "steps": spec.steps, "final_loss": float(np.mean(losses[-20:])),
        "train_sources": len(train_bank), "seconds_data": round(t_data, 1),
        "seconds_train": round(t_train, 1), "seconds": round(time.perf_counter() - t0, 1),
        # CPU seconds of this process: far below seconds x threads when other jobs share the cores
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    return state, report


# ------------------------------------------------------------------------------------------------
# the cache and the named value


def spec_key(spec: PretrainSpec) -> str:
    """16 hex digits naming the weights of ``spec`` (with the code versions that shape them)."""
    blob = json.dumps([PRETRAIN_VERSION, digits.GENERATOR_VERSION, dataclasses.asdict(spec)], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def weights_name(spec: PretrainSpec) -> str:
    """File name of the cached weights of ``spec``: ``<source>-<backbone>-<spec_key>.pt``."""
    return f"{spec.source}-{spec.backbone}-{spec_key(spec)}.pt"


def default_cache_dir() -> Path:
    """Where ``weights_path`` caches trained backbones: ``DEFAULT_CACHE_DIR`` when set, else
    ``pretrain/`` in the kit's cache (``constants.cache_root``)."""
    if DEFAULT_CACHE_DIR is not None:
        return Path(DEFAULT_CACHE_DIR)
    try:
        return cache_root() / "pretrain"
    except RuntimeError:  # HOME unset and no passwd entry: no ~/.cache to default to
        raise KitError(f"--cache: no home folder for the kit's cache (HOME is unset and this user has none); "
                       f"pass --cache <folder>, or set ${CACHE_ENV}") from None


def intact(path: Path) -> bool:
    """Whether a cached backbone file and its report read back whole: a state dict of tensors
    (``weights_only=True``) and a JSON report. A kill during a write cannot leave a half file
    (``files.write_atomic``), but a disk error, a copy cut short or a hand edit can."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        json.loads(report_path(path).read_text())
    except Exception:  # noqa: BLE001 - whatever a damaged file makes them raise: not intact
        return False
    return isinstance(state, dict) and bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def shipped_path(spec: PretrainSpec) -> Path | None:
    """The file of ``spec`` that ships with the kit, or None when the kit ships none for it."""
    path = SHIPPED_DIR / weights_name(spec)
    return path if path.is_file() else None


def weights_path(spec: PretrainSpec, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, rebuild: bool = False) -> Path:
    """The backbone file of ``spec`` (a torchvision state dict, ``torch.load(weights_only=True)``
    -able): the shipped one when the kit has it (``shipped_path``), else the cached one, trained
    first when missing. ``rebuild=True`` trains ``spec`` into the cache even where a file is shipped
    or cached (replacing the cached one). A JSON report (``report_path``) lies beside each file.
    A cached file that does not read back whole (``intact``) is trained again, with a one-line
    notice on stderr naming it."""
    spec.check()
    if not rebuild and shipped_path(spec) is not None:
        return shipped_path(spec)
    path = Path(cache_dir or default_cache_dir()) / weights_name(spec)
    if path.is_file() and not rebuild and intact(path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        hint = "" if cache_dir else f"; pass --cache <folder>, or set ${CACHE_ENV}, to a folder this user may write to"
        raise KitError(f"--cache: cannot create {path.parent} ({e.strerror or e}){hint}") from None
    # Grid workers and torchrun ranks may all ask at once: one trains, the others wait for its file.
    with files.lock(path.parent, wait=True):
        # Under the lock no other process writes these two files: a temp file of theirs was left by
        # a killed trainer (the weights' is checkpoint-sized).
        files.remove_stale_temps(path.parent, "|".join(map(re.escape, (path.name, report_path(path).name))))
        if path.is_file() and not rebuild:
            if intact(path):
                return path
            print(f"cpcl-kit: the cached backbone {path} (or its report) is damaged; training it again",
                  file=sys.stderr, flush=True)
        state, report = train_backbone(spec, progress=progress)
        report = {**report, "spec": dataclasses.asdict(spec), "key": spec_key(spec),
                  "version": PRETRAIN_VERSION, "torch": torch.__version__}
        # The report first: a weights file on disk always has its report.
        files.write_json(report_path(path), report)
        files.save_torch(path, state)
    return path


def report_path(weights: str | os.PathLike) -> Path:
    """The JSON report beside a cached weights file."""
    return Path(weights).with_suffix(".json")


def read_report(weights: str | os.PathLike) -> dict:
    """The report of a cached weights file (accuracies, steps, seconds, spec)."""
    try:
        return json.loads(report_path(weights).read_text())
    except (OSError, ValueError) as e:
        raise KitError(f"pretrain report: cannot read {report_path(weights)} ({e})") from None


def sha256(path: str | os.PathLike) -> str:
    """The first 12 hex digits of the file's sha256: how runs and reports name a backbone file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def fingerprint(cfg, cache_dir: str | os.PathLike | None = None) -> dict:
    """Which backbone weights a run of ``cfg`` starts from, for its metrics.json: the setting, and for
    a file its name and ``sha256``; for the digit scenes also whether it is the shipped backbone
    (``shipped``: the start of the committed results) and, for the kit's digit backbone, its
    accuracy on the scene digits. Runs paired by seed share their init only where the sha256 matches."""
    weights = resolve_backbone_weights(cfg, cache_dir, progress=False)
    out = {"backbone_weights": cfg.backbone_weights}
    if weights is None or not Path(weights).is_file():
        return out
    out.update(file=Path(weights).name, sha256=sha256(weights))
    if registry.dataset(cfg.dataset).backbone == NAMED_WEIGHTS:
        out["shipped"] = out["sha256"] in shipped_hashes()
    if cfg.backbone_weights == NAMED_WEIGHTS:
        out["scene_digit_acc"] = read_report(weights).get("scene_digit_acc")
    return out


def shipped_hashes() -> set[str]:
    """The sha256 prefixes of every backbone the kit ships."""
    return {sha256(p) for p in sorted(SHIPPED_DIR.glob("*.pt"))}


class OtherInitWarning(UserWarning):
    """A digit-scene run starts from a backbone other than the shipped one."""


def warn_if_other_init(init: dict) -> None:
    """One line when a digit-scene run (``fingerprint``) starts from weights the kit does not ship:
    its numbers are then not comparable with the committed results, which all start from them."""
    if init.get("shipped") is False:
        warnings.warn(f"backbone: this run starts from {init['file']} (sha256 {init['sha256']}), not from "
                      f"the backbone shipped with the kit ({', '.join(sorted(shipped_hashes()))}) that the "
                      f"committed results start from; compare its numbers with runs from the same file only",
                      OtherInitWarning, stacklevel=2)


def spec_for(cfg) -> PretrainSpec:
    """The PretrainSpec of a Config: its ``backbone`` and ``pretrain_source``, ``_steps``, ``_size``,
    ``_batch``; images = min(MAX_IMAGES, steps * batch / 2) (each seen at least twice);
    eval_images = min(2000, images). The seed is fixed (0), not the run's: like ImageNet weights,
    one backbone serves every run seed."""
    images = pretrain_images(cfg.pretrain_steps, cfg.pretrain_batch)
    return PretrainSpec(source=cfg.pretrain_source, backbone=cfg.backbone, size=cfg.pretrain_size,
                        steps=cfg.pretrain_steps, batch=cfg.pretrain_batch, images=images,
                        eval_images=min(2000, images))


def resolve_backbone_weights(cfg, cache_dir: str | os.PathLike | None = None,
                             progress: bool = True) -> str | None:
    """``cfg.backbone_weights`` for the model: the cached file's path for ``"digits"`` (trained on
    first use), anything else unchanged (None = random init, ``"imagenet"``, a file path)."""
    if cfg.backbone_weights != NAMED_WEIGHTS:
        return cfg.backbone_weights
    # (config.validate refuses "digits" for any other dataset, in one line)
    return str(weights_path(spec_for(cfg), cache_dir, progress=progress))
