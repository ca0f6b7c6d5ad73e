"""The kit's own data sets, one registry entry each (``registry.DatasetEntry``).

A data set of one's own is added the same way from a file outside the package (docs/extending.md).
"""

from __future__ import annotations

from ..registry import DatasetEntry, register_dataset
from . import cityscapes, folder, voc
from .build import digit_data
from .digits import DIGIT_CLASS_NAMES
from .palette import voc_palette

# Cityscapes OHEM class weights (docs/method.md §5), in trainId order.
CITYSCAPES_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                      0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)


def _digit_metrics(per_class_iou: list) -> dict:
    """mIoU over the ten digits alone: the background class dominates the scenes' pixels."""
    fg = [v for v in per_class_iou[1:] if v is not None]
    return {"digit_miou": sum(fg) / len(fg) if fg else float("nan")}


def _voc_check(root) -> str:
    return f"voc data root, {voc.voc_layout(root)[0]} layout"


def _cityscapes_check(root) -> str:
    return f"cityscapes data root, {cityscapes.cityscapes_layout(root)} layout"


def _folder_check(root) -> str:
    train, val = folder.folder_pairs(root)
    return (f"a folder data set: {len(train)} training images, "
            f"{'a val/ folder' if val else 'validation held out of the masked images'}")


register_dataset(DatasetEntry(
    "digits", classes=tuple(DIGIT_CLASS_NAMES), build=digit_data, metrics=_digit_metrics, generated=True,
    backbone="digits", about="the embedded digit scenes, drawn in memory from scikit-learn's bundled digits"))

register_dataset(DatasetEntry(
    "voc", classes=tuple(voc.VOC_CLASS_NAMES), splits=voc.voc_splits, check=_voc_check, palette=voc_palette,
    preset="voc", about="PASCAL VOC 2012 (+ SBD's aug masks), in the standard or the CPS layout"))

register_dataset(DatasetEntry(
    "cityscapes", classes=tuple(cityscapes.CITYSCAPES_CLASS_NAMES), splits=cityscapes.cityscapes_splits,
    check=_cityscapes_check, class_weights=CITYSCAPES_WEIGHTS, preset="cityscapes", paper_preset="cityscapes",
    about="Cityscapes' 19 trained classes, in the standard or the CPS layout"))

# A folder of one's own names its classes in classes.txt; its images without a mask are the unlabeled
# ones, so by default every image that has a mask is labeled.
register_dataset(DatasetEntry(
    "folder", read_classes=folder.folder_class_names, splits=folder.folder_splits, check=_folder_check,
    defaults={"labeled": "all"}, about="a folder of one's own: images/, masks/, classes.txt"))
