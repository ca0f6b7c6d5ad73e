"""From a Config to the three data sets a run needs: labeled, unlabeled, validation."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset, Subset

from .. import registry
from ..config import Config
from ..constants import ALL_LABELED
from ..errors import KitError
from . import images
from .digits import DIGIT_CLASS_NAMES, DigitScenes, SceneSpec, default_cache_dir
from .splits import make_partition, parse_labeled
from .transforms import train_transform, val_transform


@dataclass
class DataBundle:
    labeled: Dataset      # (image uint8 [4,crop,crop], mask [crop,crop]) with train augmentation (finish_images)
    unlabeled: Dataset    # same; masks are the true ones where known (analysis only), else 255
    val: Dataset          # (image [3,H,W], mask [H,W]) without augmentation
    class_names: list


def train_transform_of(cfg: Config, deferred: bool = True):
    """The training augmentation of ``cfg``: random scale, crop, flip and colour as it asks. Deferred
    by default: uint8 crops that ``transforms.finish_images`` normalises on the device."""
    return train_transform(cfg.crop, scales=cfg.scales or None, flip=cfg.flip, colour=cfg.colour_aug,
                           crop_pad=cfg.crop_pad, deferred=deferred)


def scene_spec(cfg: Config) -> SceneSpec:
    """The digit scenes of ``cfg`` (scene_size, digits_per_scene, digit_px, void_band), checked."""
    spec = SceneSpec(size=cfg.scene_size, digits=tuple(cfg.digits_per_scene), digit_px=tuple(cfg.digit_px),
                     void=cfg.void_band)
    try:
        spec.check()
    except KitError as e:
        raise KitError(f"scene settings (scene_size, digits_per_scene, digit_px, void_band): {e}") from None
    return spec


def digit_data(cfg: Config) -> DataBundle:
    spec = scene_spec(cfg)
    cache = default_cache_dir()  # made once, then read by every process
    train = DigitScenes("train", n=cfg.n_train_scenes, spec=spec, seed=cfg.seed, transform=train_transform_of(cfg),
                        cache_dir=cache)
    val = DigitScenes("val", n=cfg.n_val_scenes, spec=spec, seed=cfg.seed + 10_000,
                      transform=val_transform(), cache_dir=cache)
    lab, unlab = _partition(cfg, list(range(len(train))))
    return DataBundle(Subset(train, lab), Subset(train, unlab), val, DIGIT_CLASS_NAMES)


def _partition(cfg: Config, ids):
    if cfg.labeled_list or cfg.unlabeled_list:
        raise KitError("labeled_list/unlabeled_list: the digit scenes take --labeled 1/N or a count")
    if cfg.labeled == ALL_LABELED:  # full supervision; the unlabeled stream sees the same scenes
        return list(ids), list(ids)
    return make_partition(ids, parse_labeled(cfg.labeled), cfg.seed)


def class_names(cfg: Config) -> list[str]:
    """The names of cfg's classes, index = class id (a data set that names its own per run: the run's)."""
    return list(registry.dataset(cfg.dataset).classes or cfg.class_names)


def file_data(cfg: Config) -> DataBundle:
    """The data sets of a data set on disk, from its entry's ``splits``: (image, mask) path pairs
    read, augmented and batched by the kit."""
    entry = registry.dataset(cfg.dataset)
    if not cfg.data_root:
        raise KitError(f"--data-root: required for dataset '{cfg.dataset}' (the folder holding it; "
                       f"nothing is downloaded)")
    if entry.read_classes is not None:  # the run's classes are the tree's, or its labels mean other things
        found = entry.read_classes(cfg.data_root)
        if tuple(found) != tuple(cfg.class_names):
            raise KitError(f"{cfg.data_root}: classes {', '.join(found)} differ from the run's class_names "
                           f"{', '.join(cfg.class_names)} (a changed class list is another run)")
    lists = cfg.labeled_list or cfg.unlabeled_list
    # labeled=all: the whole training list labeled (a folder: every image that has a mask)
    labeled = None if lists or cfg.labeled == ALL_LABELED else parse_labeled(cfg.labeled)
    lab, unlab, val = entry.splits(cfg.data_root, labeled=labeled, labeled_list=cfg.labeled_list,
                                   unlabeled_list=cfg.unlabeled_list, seed=cfg.seed)
    c = cfg.num_classes
    return DataBundle(images.SegmentationFiles(lab, c, train_transform_of(cfg)),
                      images.SegmentationFiles([(img, None) for img, _ in unlab], c, train_transform_of(cfg)),
                      images.SegmentationFiles(val, c, val_transform()), class_names(cfg))


def build_data(cfg: Config) -> DataBundle:
    """The labeled, unlabeled and validation sets of ``cfg``'s data set (``registry.dataset``)."""
    entry = registry.dataset(cfg.dataset)
    return entry.build(cfg) if entry.build is not None else file_data(cfg)
