"""One dataclass holds every setting of a run; named presets fill it in.

CPU presets (``smoke``, ``demo``, ``benchmark``) train on the embedded digit scenes from random
initialisation and deviate from the paper recipe where that is needed to learn at all (each
deviation is listed in ``DEVIATIONS``). The paper presets (``voc``, ``cityscapes``) follow the
official code (method notes §5).
"""

from __future__ import annotations

import dataclasses
import json
import typing
import warnings
from dataclasses import dataclass, field, fields

from .errors import KitError

METHODS = ("supervised", "cps", "cpcl")
DATASETS = ("digits", "voc", "cityscapes")
NUM_CLASSES = {"digits": 11, "voc": 21, "cityscapes": 19}
DILATIONS = ("official", "torchvision")  # model.official_block_dilations / torchvision's convention
CROP_PADS = ("centre", "random")         # where a crop smaller than `crop` sits in its padding
PAPER_PRESETS = ("voc", "cityscapes")


@dataclass
class Config:
    # what to run
    method: str = "cpcl"
    dataset: str = "digits"
    data_root: str | None = None
    labeled: str = "1/16"              # fraction "1/N" or a count "92"
    labeled_list: str | None = None    # split files (CPS format) instead of `labeled`
    unlabeled_list: str | None = None
    seed: int = 0
    # model
    # The defaults of fields added later (dilation, crop_pad) are the behaviour from before they
    # existed: a config.json saved then loads (load_config_dict) into the same network and data.
    backbone: str = "resnet50"         # model.BACKBONES; the paper presets use resnet50_v1c
    output_stride: int = 16
    dilation: str = "torchvision"      # "official": CPCL's 2,4,8 in layer4 (DILATIONS)
    head_channels: int = 256
    backbone_weights: str | None = None  # a file, "imagenet", "none" (random on purpose) or None (not given)
    # data and augmentation
    crop: int = 512
    crop_pad: str = "random"           # "centre": small crops padded centred, as the official loader
    scales: tuple = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)
    flip: bool = True
    colour_aug: bool = False
    batch_size: int = 8                # labeled images per step
    unlabeled_batch_size: int = 8      # images in each of u0 and u1
    num_workers: int = 0
    # digit scenes (dataset="digits" only)
    n_train_scenes: int = 2000
    n_val_scenes: int = 300
    scene_size: int = 64
    digits_per_scene: tuple = (2, 3)   # (min, max)
    digit_px: tuple = (32, 44)         # (min, max) digit height in px
    # optimisation
    iterations: int = 39680
    optimizer: str = "sgd"             # "sgd" (paper) or "adam"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 0              # linear lr warm-up before the poly decay
    poly_power: float = 0.9
    # semi-supervised loss
    unsup_weight: float = 1.0          # lambda
    sup_only_iters: int = 0            # unsupervised loss off for the first N iterations
    rampup_iters: int = 0              # then lambda ramps linearly from 0 over N iterations
    union_rule: str = "disagreement"   # or "confidence" (ablation)
    reweight: bool = True              # False: every pixel weight 1 (ablation)
    targets: tuple = ("inter", "union")  # labels for (net 1, net 2)
    sup_loss: str = "ce"               # "ce" or "ohem" (Cityscapes)
    # evaluation
    eval_crop: int | None = None       # None: whole image; else sliding window of this size
    eval_stride: float = 2 / 3
    eval_branch: str = "1"             # "1", "2" or "ensemble"
    # devices and bookkeeping
    device: str = "auto"               # "auto": CUDA when present, else CPU
    amp: str = "auto"                  # auto (CUDA: bf16 or fp16; CPU: fp32), bf16, fp16, off
    channels_last: bool = False
    cudnn_benchmark: bool = True
    sync_bn: bool = False
    log_every: int = 10
    checkpoint_every: int = 200
    preset: str = "voc"

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# Deviations of the CPU presets from the paper recipe, shown in notebooks and written into runs.
DEVIATIONS = {
    "backbone": "ResNet-18 from random init (no pretrained weights offline), not ResNet-50 ImageNet",
    "head_channels": "thinner ASPP/decoder (64 instead of 256): the head dominates cost at 64x64",
    "optimizer": "Adam with linear warm-up instead of SGD lr 0.005: learns from scratch on a CPU",
    "sup_only_iters": "supervised-only first half, then a linear ramp of lambda (rampup_iters): "
                      "random-init teachers give pseudo labels that are all background at first",
    "unlabeled_batch_size": "4 unlabeled images per stream in the demo preset (cost)",
    "colour_aug": "label-preserving colour augmentation (channel permutation, inversion)",
    "flip": "no flips: a mirrored digit is not a digit",
    "scales": "scale jitter {0.75, 1.0, 1.25} instead of {0.5..2.0} on 64x64 scenes",
}

_CPU = dict(
    dataset="digits", backbone="resnet18", output_stride=8, dilation="torchvision", head_channels=64,
    crop=64, crop_pad="random", scene_size=64, scales=(0.75, 1.0, 1.25), flip=False, colour_aug=True,
    optimizer="adam", lr=1e-3, weight_decay=1e-4, device="auto", checkpoint_every=100,
)

PRESETS: dict[str, dict] = {
    "smoke": dict(_CPU, iterations=12, batch_size=4, unlabeled_batch_size=4, n_train_scenes=64,
                  n_val_scenes=16, warmup_iters=2, sup_only_iters=4, rampup_iters=4, log_every=2,
                  checkpoint_every=6, head_channels=32, output_stride=16),
    # About 4 minutes of CPCL on 2 cores: half supervised start, then CPCL with 4+4 unlabeled.
    "demo": dict(_CPU, iterations=400, batch_size=8, unlabeled_batch_size=4, n_train_scenes=1000,
                 n_val_scenes=200, warmup_iters=50, sup_only_iters=200, rampup_iters=100,
                 log_every=10),
    # About 25 minutes of CPCL on 2 cores. Full supervision reaches 0.60 mIoU in this schedule
    # (2,000 iterations), so the teachers of the second half are worth learning from.
    "benchmark": dict(_CPU, iterations=2000, batch_size=8, unlabeled_batch_size=8,
                      n_train_scenes=2000, n_val_scenes=300, warmup_iters=100,
                      sup_only_iters=1000, rampup_iters=300, log_every=20),
    # Paper recipes (method notes §5), for a GPU: the official v1c backbone, dilation and centred
    # crop padding. They need backbone_weights to train (check_ready_to_train). Iterations are the
    # 1/16 (VOC) and 1/8 (City) totals; change them with --set iterations=... for other partitions.
    "voc": dict(dataset="voc", backbone="resnet50_v1c", output_stride=16, dilation="official",
                head_channels=256, crop=512, crop_pad="centre", batch_size=8, unlabeled_batch_size=8,
                iterations=39680, optimizer="sgd", lr=0.005, unsup_weight=1.0, sup_loss="ce",
                eval_crop=512, num_workers=4, log_every=50, checkpoint_every=2000),
    "cityscapes": dict(dataset="cityscapes", backbone="resnet50_v1c", output_stride=16,
                       dilation="official", head_channels=256, crop=800, crop_pad="centre",
                       batch_size=16, unlabeled_batch_size=16, iterations=22194, optimizer="sgd",
                       lr=0.01, unsup_weight=5.0, sup_loss="ohem", eval_crop=800, num_workers=4,
                       log_every=50, checkpoint_every=2000, labeled="1/8"),
}


def _field_types() -> dict[str, typing.Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


# Optional fields where the text "none" is a value of its own, not "unset": backbone_weights=none
# asks for random initialisation on purpose, which a paper preset must tell from "not given".
_NONE_IS_A_VALUE = ("backbone_weights",)


def _parse(key: str, text: str, kind) -> typing.Any:
    """Parse ``text`` as the type of field ``key``."""
    origin_args = typing.get_args(kind)
    optional = type(None) in origin_args
    base = next((a for a in origin_args if a is not type(None)), kind)
    if optional and key in _NONE_IS_A_VALUE and text.lower() == "none":
        return "none"
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            if "/" in text:
                a, b = text.split("/")
                return float(a) / float(b)
            return float(text)
        if base is tuple:
            parts = [p.strip() for p in text.strip("()[]").split(",") if p.strip()]
            return tuple(_num_or_str(p) for p in parts)
        return text
    except ValueError:
        raise KitError(f"{key}: expected a value of type {getattr(base, '__name__', base)}, got {text!r}") from None


def _num_or_str(p: str):
    for cast in (int, float):
        try:
            return cast(p)
        except ValueError:
            pass
    return p


def _check_value(key: str, value, kind) -> None:
    args = typing.get_args(kind)
    base = next((a for a in args if a is not type(None)), kind)
    if value is None and type(None) in args:
        return
    ok = isinstance(value, base) or (base is float and isinstance(value, int) and not isinstance(value, bool))
    if base is int and isinstance(value, bool):
        ok = False
    if base is tuple and isinstance(value, list):
        ok = True
    if not ok:
        raise KitError(f"{key}: expected {getattr(base, '__name__', base)}, got {value!r} ({type(value).__name__})")


def validate(cfg: Config) -> Config:
    """Check choices that the types alone do not; raise KitError naming the field."""
    choices = {"method": METHODS, "dataset": DATASETS, "optimizer": ("sgd", "adam"),
               "union_rule": ("disagreement", "confidence"), "sup_loss": ("ce", "ohem"),
               "eval_branch": ("1", "2", "ensemble"), "amp": ("auto", "bf16", "fp16", "off"),
               "dilation": DILATIONS, "crop_pad": CROP_PADS}
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise KitError(f"{key}: unknown value {getattr(cfg, key)!r}, expected one of {', '.join(valid)}")
    if tuple(cfg.targets) not in (("inter", "union"), ("inter", "inter"), ("union", "union")):
        raise KitError(f"targets: expected inter,union / inter,inter / union,union, got {cfg.targets}")
    cfg.targets, cfg.scales = tuple(cfg.targets), tuple(cfg.scales) if cfg.scales else cfg.scales
    for key in ("batch_size", "unlabeled_batch_size"):
        if getattr(cfg, key) < 2:
            raise KitError(f"{key}: expected at least 2 (BatchNorm in train mode needs 2 images), "
                           f"got {getattr(cfg, key)}")
    if cfg.iterations < 1:
        raise KitError(f"iterations: expected a positive number, got {cfg.iterations}")
    if cfg.lr <= 0:
        raise KitError(f"lr: expected a positive number, got {cfg.lr}")
    return cfg


def make_config(preset: str = "smoke", overrides: dict | None = None, **kw) -> Config:
    """A Config from a named preset, with fields overridden by ``overrides`` and keywords."""
    if preset not in PRESETS:
        raise KitError(f"preset: unknown '{preset}', expected one of {', '.join(PRESETS)}")
    types = _field_types()
    values = dict(PRESETS[preset], preset=preset)
    for key, value in {**(overrides or {}), **kw}.items():
        if key not in types:
            raise KitError(f"unknown setting '{key}'; valid settings: {', '.join(types)}")
        if isinstance(value, str) and types[key] is not str:
            value = _parse(key, value, types[key])
        _check_value(key, value, types[key])
        values[key] = value
    return validate(Config(**values))


class RandomInitWarning(UserWarning):
    """A paper-preset run trains its backbone from random initialisation, as asked (backbone_weights=none)."""


def check_ready_to_train(cfg: Config) -> Config:
    """Refuse to start a paper-preset run without backbone weights; warn when random init is asked.

    The paper recipe fine-tunes an ImageNet-pretrained backbone, and a run that forgot the file
    would train for hours towards far lower numbers. The check lives here, called by
    ``train.train`` before anything else, not in ``validate``: a paper-preset Config is also built
    only to be looked at (``make_config("voc")`` in notebooks and tests) or to rebuild a finished
    run whose weights come from its checkpoint (``evaluate``), and none of those needs the file.
    ``backbone_weights="none"`` trains from random init on purpose: allowed, with a
    ``RandomInitWarning``, and recorded in the run's config.json. Returns ``cfg``.
    """
    if cfg.preset not in PAPER_PRESETS:
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


def parse_sets(items: list[str] | None) -> dict:
    """``["lr=0.1", "flip=false"]`` -> ``{"lr": "0.1", "flip": "false"}`` (parsed by make_config)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise KitError(f"--set {item}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config_json(path) -> Config:
    """A Config saved by a run (``config.json``)."""
    return load_config_dict(json.loads(open(path).read()))


def load_config_dict(data: dict) -> Config:
    """A Config from a dict written by ``Config.to_dict`` (unknown keys are ignored)."""
    known = {f.name for f in fields(Config)}
    data = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
    return validate(Config(**data))
