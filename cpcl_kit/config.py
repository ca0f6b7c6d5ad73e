"""One dataclass holds every setting of a run; named presets fill it in.

CPU presets (``smoke``, ``demo``, ``benchmark``) train on the embedded digit scenes from a backbone
that the kit pretrains on digits held out of every scene (``backbone_weights="digits"``,
``pretrain.py``; the stand-in for ImageNet) and deviate from the paper recipe where that is needed
to learn at all (each deviation is listed in ``DEVIATIONS``). The paper presets (``voc``,
``cityscapes``) follow the official code (docs/method.md §6); what still differs is listed in
``PAPER_DEVIATIONS``. Every run writes the list that applies to it (``deviations(cfg)``) into its
``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
import warnings
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path

from . import registry
from .constants import (ALL_LABELED, BACKBONES, CROP_PADS, DILATIONS, LOSS_NORMALISERS, OUTPUT_STRIDES,
                        PAPER_PRESETS, PRETRAIN_SOURCES, STUDENT_AUGS, TARGET_PAIRS, TEACHER_BN, UNION_RULES,
                        WEIGHT_SCOPES, imagenet_file)
from .errors import KitError
from .limits import (BOX_PIXEL_BYTES, CONV3_BYTES, GIB, MAX_OPTIMIZER_SCALAR, MAX_SEED, MAX_SIDE, MAX_WORKERS, MEMORY,
                     PIXEL_BYTES, SCENE_PIXEL_BYTES, WORKER_BYTES, check_pretrain_memory, pretrain_images)
from .typed import as_declared, check_value, parse_text
from .files import shown_path


@dataclass
class Config:
    """Every setting of a run. ``Config()`` is the paper's VOC recipe (the ``voc`` preset, 1/16
    labeled); every other preset overrides fields of it (``PRESETS``). Types and limits are checked
    by ``validate`` (``make_config`` and ``load_config_dict`` call it)."""

    # what to run
    method: str = "cpcl"
    dataset: str = "voc"
    data_root: str | None = None
    # dataset="folder": its classes, read from ROOT/classes.txt when not given. Kept in the run's
    # config, so that its checkpoint predicts and evaluates without the tree, and a changed
    # classes.txt is another run.
    class_names: tuple[str, ...] | None = None
    labeled: str = "1/16"              # fraction "1/N" or a count "92"
    labeled_list: str | None = None    # split files (CPS format) instead of `labeled`
    unlabeled_list: str | None = None
    seed: int = 0
    # model
    backbone: str = "resnet50_v1c"     # constants.BACKBONES: the official deep-stem ResNet-50
    output_stride: int = 16
    dilation: str = "official"         # CPCL's 2,4,8 in layer4; "torchvision": its convention (DILATIONS)
    head_channels: int = 256
    backbone_weights: str | None = None  # a file, "imagenet", "none" (random on purpose) or None (not given)
    # backbone pretraining behind backbone_weights="digits" (pretrain.py; cached by these settings)
    pretrain_source: str = "handwritten"  # "handwritten", "printed" or "mixed"
    pretrain_steps: int = 400          # the shipped backbone's spec (pretrain.SHIPPED_DIR)
    pretrain_size: int = 64            # px of the one-digit pretraining images
    pretrain_batch: int = 64
    # data and augmentation
    crop: int = 512
    crop_pad: str = "centre"           # small crops padded centred, as the official loader; or "random"
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)
    flip: bool = True
    colour_aug: bool = False
    batch_size: int = 8                # labeled images per step
    unlabeled_batch_size: int = 8      # images in each of u0 and u1
    num_workers: int = 4
    # digit scenes (dataset="digits" only)
    n_train_scenes: int = 2000
    n_val_scenes: int = 300
    scene_size: int = 64
    digits_per_scene: tuple[int, int] = (2, 3)   # (min, max)
    digit_px: tuple[int, int] = (32, 44)         # (min, max) digit height in px
    void_band: int = 0                 # px of void (255) on each side of every outline, as VOC's masks
    # optimisation
    iterations: int = 39680
    optimizer: str = "sgd"             # "sgd" (paper) or "adam"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 0              # linear lr warm-up before the poly decay
    poly_power: float = 0.9
    # semi-supervised loss: the paper's settings
    sup_loss: str = "ce"               # "ce" or "ohem" (Cityscapes)
    unsup_weight: float = 1.0          # lambda
    cutmix_boxes: int = 3              # CutMix boxes per unlabeled image (official 3; 0: no mixing, the student sees u0)
    union_rule: str = "disagreement"   # or "confidence" (ablation)
    reweight: bool = True              # False: every pixel weight 1 (ablation)
    targets: tuple[str, str] = ("inter", "union")  # labels for (net 1, net 2)
    # ... and the switches the paper does not have, each off (the official value) by default: the CPU
    # presets' recipe and the ablations (method/variants.py; deviations.DEVIATIONS says why)
    sup_only_iters: int = 0            # unsupervised loss off for the first N iterations
    rampup_iters: int = 0              # then lambda ramps linearly from 0 over N iterations
    weight_scope: str = "pixel"        # "batch": one confidence per teacher and batch (WEIGHT_SCOPES)
    inter_norm: str = "all"            # "labeled": intersection loss averaged over labeled pixels
    teacher_bn: str = "train"          # "eval": teachers predict with BatchNorm's running statistics
    pseudo_void_band: int = 0          # px without pseudo label on each side of either teacher's outlines
    student_aug: str = "none"          # "affine": the student sees the mixed image warped (STUDENT_AUGS)
    # evaluation
    eval_crop: int | None = 512        # sliding window of this size; None: the whole image at once
    eval_stride: float = 2 / 3
    eval_branch: str = "1"             # "1", "2" or "ensemble"
    # devices and bookkeeping
    device: str = "auto"               # "auto": CUDA when present, else CPU
    amp: str = "auto"                  # auto (CUDA: bf16 or fp16; CPU: fp32), bf16, fp16, off
    channels_last: bool = True         # CUDA: +38 % for CPCL on an H200; CPU presets off
    # CPU: each net of a two-net step on its own thread, one torch thread each (the nets' work is
    # disjoint, so each net's arithmetic is unchanged and the run is bit for bit the same).
    net_threads: bool = True
    cudnn_benchmark: bool = True
    # Several CUDA processes: BatchNorm over the global batch (the official statistics); one process: no-op
    sync_bn: bool = True
    log_every: int = 50
    checkpoint_every: int = 2000
    # Watching a run; none of these changes what it computes (runs.BOOKKEEPING).
    eval_every: int = 4960             # evaluate the validation set every N iterations (0: only at the end)
    tensorboard: bool = True           # TensorBoard event files in the run folder, when tensorboard is installed
    tb_image_every: int = 2000         # ... with the teachers' pseudo labels on fixed scenes every N (0: none)
    preset: str = "voc"

    @property
    def num_classes(self) -> int:
        n = registry.dataset(self.dataset).num_classes
        if n is None:  # a data set that names its classes per run (make_config reads them from data_root)
            if self.class_names is None:
                raise KitError(f"class_names: dataset '{self.dataset}' names its classes in its folder; pass "
                               f"data_root (the folder holding it) to make_config")
            return len(self.class_names)
        return n

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The CPU presets, chosen on a tuning set (data seed 100, never a reported seed; benchmarks/README.md,
# "Tuning the CPU presets"): a narrow ResNet-18 (resnet18_w16) makes a step about five times cheaper
# than ResNet-18, so a run can train long enough for the unlabeled scenes to pay off; scenes of one
# digit of 40-56 px whose masks carry a 1-px void outline (void_band, as VOC marks its object
# boundaries): with two digits they overlapped so much that even full supervision merged them, and
# without the void outline the score was mostly boundary position at a decoder stride of 4. Output
# stride 16 as in the paper.
_CPU = dict(
    dataset="digits", backbone="resnet18_w16", backbone_weights="digits", output_stride=16,
    dilation="torchvision", head_channels=64, crop=64, crop_pad="random", scene_size=64, channels_last=False,
    sync_bn=False,
    digits_per_scene=(1, 1), digit_px=(40, 56), void_band=1,
    scales=(0.75, 1.0, 1.25), flip=False, colour_aug=True,
    optimizer="adam", lr=1e-3, weight_decay=1e-4, device="auto", checkpoint_every=100,
    eval_crop=None, num_workers=0, log_every=10, tb_image_every=300,
)

# The digit-scene recipe: 2,400 iterations on 2,000 scenes (125 labeled at 1/16), a quarter of them
# supervised only, then CPCL with 4 unlabeled scenes per step. No CutMix, an affine student view and
# eval-mode teachers (DEVIATIONS says why each). A shorter run cannot tell CPCL from supervised: the
# float order alone (another CPU, another thread count) moves a short run by more than the gain.
# 1,000 validation scenes keep the evaluation's own sampling noise small beside the training's.
_DIGITS = dict(_CPU, iterations=2400, batch_size=8, unlabeled_batch_size=4, n_train_scenes=2000,
               n_val_scenes=1000, warmup_iters=100, sup_only_iters=600, rampup_iters=200, log_every=20,
               cutmix_boxes=0, student_aug="affine", teacher_bn="eval",
               # a validation curve of 4 points (the last is the run's own evaluation at the end):
               # few enough evaluations of the 1,000 validation scenes to keep make demo's time
               eval_every=600)

PRESETS: dict[str, dict] = {
    # Every CPU preset starts from the same shipped digit backbone (pretrain.SHIPPED_DIR), smoke too.
    "smoke": dict(_CPU, iterations=12, batch_size=4, unlabeled_batch_size=4, n_train_scenes=64,
                  n_val_scenes=16, warmup_iters=2, sup_only_iters=4, rampup_iters=4, log_every=2,
                  checkpoint_every=6, head_channels=32, output_stride=16, eval_every=0, tb_image_every=6),
    # What make demo trains live: a recipe whose gain over supervised exceeds the measured noise
    # (benchmarks/results/noise-benchmark.md), within make demo's time.
    "demo": dict(_DIGITS),
    # The prepared run set and the benchmark grids (ssl_gain.py, ablation.py, noise.py) over seeds:
    # the demo's recipe today; unlike the demo it is not bound to make demo's time.
    "benchmark": dict(_DIGITS),
    # Paper recipes (docs/method.md §6), for a GPU: the official v1c backbone, dilation and centred
    # crop padding. They need backbone_weights to train (check_ready_to_train). Iterations are the
    # 1/16 (VOC) and 1/8 (City) totals; change them with --set iterations=... for other partitions.
    # voc is the Config defaults themselves (resnet50_v1c, official dilation, centred padding, crop
    # 512, batch 8+8+8, SGD lr 0.005, lambda 1, CE, 39,680 iterations, sliding-window eval at 512,
    # a validation curve of 8 points).
    "voc": {},
    "cityscapes": dict(dataset="cityscapes", backbone="resnet50_v1c", output_stride=16,
                       dilation="official", head_channels=256, crop=800, crop_pad="centre",
                       batch_size=16, unlabeled_batch_size=16, iterations=22194, optimizer="sgd",
                       lr=0.01, unsup_weight=5.0, sup_loss="ohem", eval_crop=800, num_workers=4,
                       log_every=50, checkpoint_every=2000, labeled="1/8",
                       eval_every=2775, tb_image_every=2000),  # 8 points, the last at the end
}


def _field_types() -> dict[str, typing.Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


# Optional fields where the text "none" is a value of its own, not "unset": backbone_weights=none
# asks for random initialisation on purpose, which a paper preset must tell from "not given".
_NONE_IS_A_VALUE = ("backbone_weights",)


class Limit(typing.NamedTuple):
    """What a number accepts beyond its type: ``lo <= value`` (``lo < value`` with ``open_lo``) and
    ``value <= hi``; None: no bound. ``text``: the "expected ..." words, when the bare bounds do not
    say why. A tuple field's limit holds for each of its numbers."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    text: str | None = None

    def holds(self, v) -> bool:
        return ((self.lo is None or (v > self.lo if self.open_lo else v >= self.lo))
                and (self.hi is None or v <= self.hi))

    def expected(self) -> str:
        if self.text:
            return self.text
        if self.lo is not None and self.hi is not None:
            return f"a number in {'(' if self.open_lo else '['}{self.lo}, {self.hi}]"
        if self.lo == 0 and self.open_lo:
            return "a positive number"
        if self.lo is not None:
            return f"{'more than' if self.open_lo else 'at least'} {self.lo}"
        return f"at most {self.hi}"


_BN = "BatchNorm in train mode needs 2 images"
# The limits of the numeric fields, checked by ``validate`` (their types come from the annotations).
# An upper bound either follows from what this machine can hold (MEMORY) or keeps a value inside
# the numbers the arithmetic takes; ``validate`` adds the bounds that join several fields (a batch
# of crops, the scenes of a data set, CutMix boxes).
LIMITS: dict[str, Limit] = {
    "seed": Limit(0, MAX_SEED, text=f"an integer in [0, {MAX_SEED}] (32 bits)"),
    "head_channels": Limit(1, math.isqrt(MEMORY // CONV3_BYTES),
                           text=f"an integer in [1, {math.isqrt(MEMORY // CONV3_BYTES)}] (a 3x3 convolution of "
                                f"that many channels to as many must fit in this machine's {GIB})"),
    "pretrain_steps": Limit(0, open_lo=True),
    "pretrain_size": Limit(16, text="at least 16 px"),
    "pretrain_batch": Limit(2, text="at least 2 (BatchNorm)"),
    # and at least MIN_CROP_STRIDES x output_stride (validate)
    "crop": Limit(1, MAX_SIDE, text=f"at most {MAX_SIDE} px (one image of that side must fit in this "
                                    f"machine's {GIB})"),
    # Below 1/16 an image shrinks to a few pixels (a 64 px scene to under 4); above 16 it grows to
    # 256 times its pixels before the crop.
    "scales": Limit(1 / 16, 16, text="scale factors in [0.0625, 16], e.g. 0.5,1,2"),
    "batch_size": Limit(2, text=f"at least 2 ({_BN})"),  # at most: what a step of crops can hold (validate)
    "unlabeled_batch_size": Limit(2, text=f"at least 2 ({_BN})"),
    "num_workers": Limit(0, MAX_WORKERS,
                         text=f"0 (load in this process) or at most {MAX_WORKERS} loader processes (each holds "
                              f"{WORKER_BYTES >> 20} MiB or more of this machine's {GIB})"),
    "n_train_scenes": Limit(1),  # at most: what memory holds at scene_size (validate)
    "n_val_scenes": Limit(1),
    "scene_size": Limit(8, MAX_SIDE, text=f"8 to {MAX_SIDE} px"),
    # Each digit is placed, checked for overlap and drawn in turn: beyond a few dozen per scene a
    # data set takes hours to build and shows a scene-filling scribble.
    "digits_per_scene": Limit(0, 64, text="(min, max) digits per scene, 0 <= min <= max <= 64"),
    "digit_px": Limit(8, text="(min, max) digit height in px, 8 <= min <= max <= scene_size"),
    "void_band": Limit(0, 4, text="0 to 4 px"),
    "iterations": Limit(0, open_lo=True),
    "lr": Limit(0, MAX_OPTIMIZER_SCALAR, open_lo=True,
                text=f"a positive number at most {MAX_OPTIMIZER_SCALAR:.3g} (the optimizers step in float32)"),
    "momentum": Limit(0, 1, text="a number in [0, 1)"),  # 1 itself: excluded in validate
    "weight_decay": Limit(0, MAX_OPTIMIZER_SCALAR,
                          text=f"a number in [0, {MAX_OPTIMIZER_SCALAR:.3g}] (the optimizers step in float32)"),
    "warmup_iters": Limit(0),
    "poly_power": Limit(0),
    "unsup_weight": Limit(0),
    "sup_only_iters": Limit(0),
    "rampup_iters": Limit(0),
    "pseudo_void_band": Limit(0, text="0 (none) or a band width in px"),  # at most: the crop (validate)
    "cutmix_boxes": Limit(0, text="0 (no mixing) or a number of boxes"),  # at most: what memory holds (validate)
    "eval_crop": Limit(1, MAX_SIDE, text=f"at most {MAX_SIDE} px (one image of that side must fit in this "
                                         f"machine's {GIB})"),  # and at least MIN_CROP_STRIDES x output_stride
    "eval_stride": Limit(0, 1, open_lo=True, text="a share of the window in (0, 1]"),
    "log_every": Limit(1),
    "checkpoint_every": Limit(1),
    "eval_every": Limit(0, text="0 (off) or a number of iterations"),
    "tb_image_every": Limit(0, text="0 (off) or a number of iterations"),
}

# A crop (and an evaluation window) must span at least this many output strides: layer4 then sees
# at least 2x2 positions. Below, its map is one position per image, every ASPP branch sees the same
# single feature, and a run trains without error to a near-constant prediction.
MIN_CROP_STRIDES = 2

# The valid values of the fields that take one of a few names (or numbers).
# (method and dataset: the registered ones, ``registry``.)
CHOICES = {"optimizer": ("sgd", "adam"), "union_rule": UNION_RULES,
           "sup_loss": ("ce", "ohem"), "eval_branch": ("1", "2", "ensemble"),
           "amp": ("auto", "bf16", "fp16", "off"), "dilation": DILATIONS, "crop_pad": CROP_PADS,
           "pretrain_source": PRETRAIN_SOURCES, "weight_scope": WEIGHT_SCOPES, "inter_norm": LOSS_NORMALISERS,
           "teacher_bn": TEACHER_BN, "student_aug": STUDENT_AUGS, "backbone": BACKBONES,
           "output_stride": OUTPUT_STRIDES, "targets": TARGET_PAIRS}

# device: "auto", "cpu", "cuda" (this process's GPU) or "cuda:N" (N a GPU's index: a few digits, not a
# number torch cannot hold).
_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,4})?")


def check_device(value, name: str = "device") -> str:
    """``value`` when it is a device the kit runs on (auto, cpu, cuda, cuda:N), else one KitError
    naming ``name``: torch also takes "meta" and others, on which nothing can be computed."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise KitError(f"{name}: expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def parse_labeled(spec: str | int | float) -> int | float:
    """'1/16' -> 0.0625, '0.125' -> 0.125 (fractions in (0, 1)), '92' -> 92 (an image count)."""
    if isinstance(spec, bool):
        raise KitError(f"labeled: expected a fraction like '1/16' or a count like '92', got {spec!r}")
    if isinstance(spec, int):
        value: int | float = spec
    elif isinstance(spec, float):
        value = spec
    else:
        s = str(spec).strip()
        try:
            if re.fullmatch(r"\d+", s):
                value = int(s)
            elif re.fullmatch(r"\d+\s*/\s*\d+", s):
                value = float(Fraction(s.replace(" ", "")))
            else:
                value = float(s)
        except (ValueError, ZeroDivisionError):
            raise KitError(f"labeled: expected a fraction like '1/16' or a count like '92', got {spec!r}") from None
    if isinstance(value, int) and value < 1:
        raise KitError(f"labeled: expected a count >= 1, got {spec!r}")
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise KitError(f"labeled: expected a fraction in (0, 1) like '1/16', got {spec!r}")
    return value


def validate(cfg: Config) -> Config:
    """Check every field of ``cfg`` before anything loads: its declared type (finite numbers), its
    limits (``LIMITS``), its choices (``CHOICES``) and the few rules between fields. Raises one
    KitError naming the field and what was expected; returns ``cfg`` with lists as tuples."""
    types = _field_types()
    for f in fields(Config):
        value = getattr(cfg, f.name)
        check_value(f.name, value, types[f.name])
        setattr(cfg, f.name, as_declared(value, types[f.name]))
    for key, limit in LIMITS.items():
        value = getattr(cfg, key)
        if value is not None and not all(limit.holds(v) for v in (value if isinstance(value, tuple) else [value])):
            raise KitError(f"{key}: expected {limit.expected()}, got {_shown(value)}")
    registry.method(cfg.method)  # an unknown name: a KitError listing the registered ones
    registry.dataset(cfg.dataset)
    for key, valid in {**CHOICES, "preset": tuple(PRESETS)}.items():
        if getattr(cfg, key) not in valid:
            if key == "targets":
                raise KitError(f"targets: expected {' / '.join(','.join(t) for t in TARGET_PAIRS)}, "
                               f"got {','.join(cfg.targets)}")
            raise KitError(f"{key}: unknown value {getattr(cfg, key)!r}, expected one of "
                           f"{', '.join(map(str, valid))}")
    if cfg.momentum >= 1:
        raise KitError(f"momentum: expected {LIMITS['momentum'].expected()}, got {cfg.momentum}")
    check_device(cfg.device)
    if cfg.labeled != ALL_LABELED:
        parse_labeled(cfg.labeled)
    smallest = MIN_CROP_STRIDES * cfg.output_stride
    for key in ("crop", "eval_crop"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < smallest:
            raise KitError(f"{key}: expected at least {smallest} px ({MIN_CROP_STRIDES} x output_stride "
                           f"{cfg.output_stride}, so that layer4 sees 2x2 positions), got {getattr(cfg, key)}")
    _check_memory(cfg)
    lo, hi = cfg.digits_per_scene
    if lo > hi:
        raise KitError(f"digits_per_scene: expected {LIMITS['digits_per_scene'].text}, got {_shown((lo, hi))}")
    lo, hi = cfg.digit_px
    if not lo <= hi <= cfg.scene_size:
        raise KitError(f"digit_px: expected {LIMITS['digit_px'].text}={cfg.scene_size}, got {_shown((lo, hi))}")
    entry = registry.dataset(cfg.dataset)
    if entry.generated:
        where = f"preset {cfg.preset!r}" if preset_value(cfg.preset, "dataset") == cfg.dataset else \
            f"dataset {cfg.dataset!r}"
        for key in ("data_root", "labeled_list", "unlabeled_list"):
            if getattr(cfg, key):
                raise KitError(f"{key}: {where} trains on {entry.about} (split by --labeled 1/N or a count); "
                               f"{key} is for a data set on disk (voc, cityscapes, folder)")
    if cfg.class_names is not None:
        if entry.classes is not None:
            raise KitError(f"class_names: only a data set without classes of its own (a folder) names them per "
                           f"run; dataset {cfg.dataset!r} has its own")
        if len(cfg.class_names) < 2 or len(set(cfg.class_names)) != len(cfg.class_names) or \
                not all(n.strip() for n in cfg.class_names):
            raise KitError(f"class_names: expected at least 2 distinct, non-empty names, got {_shown(cfg.class_names)}")
    # backbone pretraining (used when backbone_weights="digits")
    if cfg.backbone_weights == "digits" and entry.backbone != "digits":
        raise KitError(f"backbone_weights: 'digits' is pretrained for the digit scenes, not for dataset "
                       f"'{cfg.dataset}'; pass a weights file, 'imagenet', or 'none' (random init)")
    return cfg


def _check_memory(cfg: Config) -> None:
    """The bounds that join several fields: what one step, the digit scenes and the CutMix masks
    need at the least must fit in this machine's memory (``MEMORY``); a KitError names the field
    to lower, and its largest value that fits."""
    pixels = cfg.crop * cfg.crop
    two_nets = registry.method(cfg.method).unlabeled
    # A step holds batch_size labeled crops, and two-net methods 2 x unlabeled_batch_size more.
    for key, per in (("batch_size", 1), ("unlabeled_batch_size", 2 if two_nets else 0)):
        most = MEMORY // (PIXEL_BYTES * pixels * per) if per else None
        if most is not None and getattr(cfg, key) > most:
            if most < 2:  # even the smallest batch does not fit: the crop is what to lower
                side = math.isqrt(MEMORY // (PIXEL_BYTES * 2 * per))
                raise KitError(f"crop: expected at most {side} px for batches of 2 ({key}) on this machine "
                               f"({GIB}), got {cfg.crop}")
            raise KitError(f"{key}: expected at most {most} images of {cfg.crop} px per step on this machine "
                           f"({GIB}), got {getattr(cfg, key)}")
    if cfg.cutmix_boxes and two_nets:
        most = MEMORY // (BOX_PIXEL_BYTES * pixels * cfg.unlabeled_batch_size)
        if cfg.cutmix_boxes > most:
            raise KitError(f"cutmix_boxes: expected at most {most} boxes per image ({cfg.unlabeled_batch_size} "
                           f"masks of {cfg.crop} px per box must fit in this machine's {GIB}), "
                           f"got {cfg.cutmix_boxes}")
    if cfg.pseudo_void_band > cfg.crop:
        raise KitError(f"pseudo_void_band: expected at most the crop, {cfg.crop} px (a wider band leaves no "
                       f"pseudo label), got {cfg.pseudo_void_band}")
    images = pretrain_images(cfg.pretrain_steps, cfg.pretrain_batch)
    check_pretrain_memory(cfg.pretrain_size, cfg.pretrain_batch, images)
    if registry.dataset(cfg.dataset).generated:
        most = MEMORY // (SCENE_PIXEL_BYTES * cfg.scene_size * cfg.scene_size)
        if cfg.n_train_scenes + cfg.n_val_scenes > most:
            key = "n_train_scenes" if cfg.n_train_scenes >= cfg.n_val_scenes else "n_val_scenes"
            raise KitError(f"{key}: expected at most {most} scenes of {cfg.scene_size} px in all (train and "
                           f"val) on this machine ({GIB}), got {cfg.n_train_scenes} + {cfg.n_val_scenes}")


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def make_config(preset: str = "smoke", overrides: dict | None = None, **kw) -> Config:
    """A Config from a named preset, with fields overridden by ``overrides`` and keywords."""
    if preset not in PRESETS:
        raise KitError(f"preset: unknown '{preset}', expected one of {', '.join(PRESETS)}")
    types = _field_types()
    values = dict(PRESETS[preset], preset=preset)
    for key, value in {**(overrides or {}), **kw}.items():
        if key not in types:
            raise KitError(f"unknown setting '{key}'; valid settings: {', '.join(types)}")
        if key == "preset" and value != preset:
            # The name records which preset filled the other fields: set alone it would label one
            # preset's settings as another's (a smoke run shown as the paper's voc recipe).
            raise KitError(f"preset: chosen with --preset (here {preset!r}), not set as a field; got "
                           f"preset={value!r}: pass --preset {value} to start from that preset's settings")
        if isinstance(value, str) and types[key] is not str:
            value = parse_text(key, value, types[key], key in _NONE_IS_A_VALUE)
        check_value(key, value, types[key])
        values[key] = value
    given = set(overrides or {}) | set(kw)
    values.update(dataset_defaults(preset, values, given))
    return validate(Config(**values))


# The backbone a CPU preset trains on real data: the narrow digit ResNet has no ImageNet weights.
REAL_DATA_CPU_BACKBONE = "resnet18"


def dataset_defaults(preset: str, values: dict, given: set) -> dict:
    """The settings that follow the data set rather than the preset, for fields the user did not give.

    A CPU preset (tuned on the digit scenes) asked to train on real data (voc, cityscapes, folder)
    keeps its recipe, but its digit backbone gives way: a ResNet-18 that starts from torchvision's
    ImageNet weights when its local cache holds them (``constants.imagenet_file``), else from random
    init (``backbone_weights=none``: ``check_ready_to_train`` warns, config.json records it). A folder
    data set's labeled part is every image that has a mask (``labeled=all``): its images without masks
    are the unlabeled ones; its classes are those of its classes.txt. Returns the changed fields only."""
    dataset = values.get("dataset", preset_value(preset, "dataset"))
    entry = registry.dataset(dataset)
    out: dict = {k: v for k, v in entry.defaults.items() if k not in given}
    if entry.read_classes is not None and "class_names" not in given and values.get("data_root"):
        out["class_names"] = tuple(entry.read_classes(values["data_root"]))
    if not entry.generated and registry.dataset(preset_value(preset, "dataset")).generated:
        if "backbone" not in given:
            out["backbone"] = REAL_DATA_CPU_BACKBONE
        if "backbone_weights" not in given:
            file = imagenet_file(out.get("backbone", values.get("backbone")))
            out["backbone_weights"] = "imagenet" if file is not None and file.is_file() else "none"
    return out


class RandomInitWarning(UserWarning):
    """A run on real data trains its backbone from random initialisation (backbone_weights=none): asked
    for on a paper preset, or the fallback of a CPU preset when no ImageNet weights are cached."""


def check_ready_to_train(cfg: Config) -> Config:
    """Refuse to start a paper-preset run without backbone weights; warn when random init is asked.

    The paper recipe fine-tunes an ImageNet-pretrained backbone, and a run that forgot the file
    would train for hours towards far lower numbers. The check lives here, called by
    ``train.train`` before anything else, not in ``validate``: a paper-preset Config is also built
    only to be looked at (``make_config("voc")`` in notebooks and tests) or to rebuild a finished
    run whose weights come from its checkpoint (``evaluate``), and none of those needs the file.
    ``backbone_weights="none"`` trains from random init on purpose: allowed, with a
    ``RandomInitWarning``, and recorded in the run's config.json (``deviations``). Returns ``cfg``.
    """
    if cfg.preset not in PAPER_PRESETS:
        if cfg.backbone_weights == "none" and not registry.dataset(cfg.dataset).generated:
            warnings.warn(f"backbone_weights=none: the {cfg.backbone} backbone trains on {cfg.dataset} data from "
                          f"random initialisation (ImageNet weights would help: put "
                          f"{shown_path(imagenet_file(cfg.backbone) or imagenet_file(REAL_DATA_CPU_BACKBONE))} in "
                          f"torchvision's cache, or pass "
                          f"--set backbone_weights=<file>); expect much lower mIoU", RandomInitWarning, stacklevel=2)
        return cfg
    if cfg.backbone_weights is None:
        raise KitError(
            f"backbone_weights: the {cfg.preset} preset trains from a pretrained backbone and none was "
            f"given; pass --set backbone_weights=<file>: resnet50_v1c.pth or resnet101_v1c.pth from the "
            f"CPS/TorchSemiSeg release (DATA/pytorch-weight/, github.com/charlesCXK/TorchSemiSeg) for "
            f"backbone=resnet50_v1c/resnet101_v1c, or a torchvision ImageNet file (or 'imagenet' for "
            f"torchvision's local cache) with backbone=resnet50/resnet101; backbone_weights=none trains "
            f"from random init on purpose")
    if cfg.backbone_weights == "none":
        warnings.warn(f"backbone_weights=none: the {cfg.preset} run trains its {cfg.backbone} backbone "
                      f"from random initialisation, not from pretrained weights as the paper does; "
                      f"expect much lower mIoU", RandomInitWarning, stacklevel=2)
    return cfg


def check_weights_file(cfg: Config) -> None:
    """Refuse a ``backbone_weights`` file that is not there, before data or nets are built (``train``
    calls it; a finished run's config may name a file since moved, so ``validate`` does not)."""
    if cfg.backbone_weights not in (None, "digits", "imagenet", "none") and not Path(cfg.backbone_weights).is_file():
        raise KitError(f"backbone_weights: file not found: {cfg.backbone_weights} (expected a weights file, "
                       f"'imagenet', 'none' or, on the digit scenes, 'digits')")


def preset_value(preset: str, key: str):
    """Setting ``key`` of ``preset``: the preset's own value, else the Config default."""
    return PRESETS[preset].get(key, next(f.default for f in fields(Config) if f.name == key))


def plain(value):
    """``value`` with every tuple a list, as a setting reads back from JSON: how settings compare."""
    return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value


# Config fields added after runs were made, with the value that reproduces those earlier runs (the
# kit's behaviour before the field existed). A saved config.json that lacks one loads with that value
# (``load_config_dict``), and the same-run rule counts it as holding it (``runs.differing_settings``),
# so a new field neither changes an old run nor orphans its folder.
ADDED_FIELDS = {
    "class_names": None,          # no folder data set yet
    "dilation": "torchvision",    # torchvision's dilation convention
    "crop_pad": "random",         # small crops padded at a random position
    "void_band": 0,               # scenes without a void outline
    "weight_scope": "pixel",      # the official code's current per-pixel weight
    "inter_norm": "all",          # ... and its normaliser
    "teacher_bn": "train",        # the official teachers
    "pseudo_void_band": 0,        # pseudo labels on every pixel
    "cutmix_boxes": 3,            # the official CutMix
    "student_aug": "none",        # the student sees the mixed image itself
}


def load_config_dict(data: dict) -> Config:
    """A Config from a dict written by ``Config.to_dict`` (unknown keys are ignored; a field the
    dict lacks takes its ``ADDED_FIELDS`` value, else its default), checked by ``validate``."""
    if not isinstance(data, dict):
        raise KitError(f"config: expected the settings as a JSON object, got a {type(data).__name__}")
    known = {f.name for f in fields(Config)}
    data = {**ADDED_FIELDS, **{k: v for k, v in data.items() if k in known}}
    return validate(Config(**data))
