"""PASCAL VOC 2012 (21 classes, 255 ignore): its two layouts (the standard one, CPS's) and its splits."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import KitError
from .images import Pair, missing_error, under_root
from .splits import check_relative, choose_split, id_candidates, read_split_list


VOC_CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip


def voc_layout(root: str | Path) -> tuple[str, Path]:
    """('cps', root) or ('voc', <.../VOC2012>) for a VOC data root; KitError naming both layouts otherwise."""
    root = Path(root)
    if (root / "train_aug" / "image").is_dir() and (root / "val" / "image").is_dir():
        return "cps", root
    for base in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (base / "JPEGImages").is_dir() and (
            (base / "SegmentationClassAug").is_dir() or (base / "SegmentationClass").is_dir()
        ):
            return "voc", base
    state = "does not exist" if not root.exists() else "is in neither known layout"
    raise KitError(
        f"{root}: VOC data root {state}; expected either the CPS layout (train_aug/image/<id>.jpg, "
        "train_aug/label/<id>.png, val/image, val/label, train_aug.txt, val.txt) or the standard "
        "layout (VOCdevkit/VOC2012 with JPEGImages/<id>.jpg, SegmentationClassAug|SegmentationClass/<id>.png, "
        "ImageSets/Segmentation/*.txt)"
    )


def voc_files(root: str | Path, ids: Sequence[str], split: str, require_masks: bool = True) -> list[Pair]:
    """(image, mask) paths of VOC ids. split: 'train' (train_aug in the CPS layout) or 'val'.

    KitError listing missing images (and missing masks if require_masks; else such masks are None).
    """
    if split not in ("train", "val"):
        raise KitError(f"split: expected 'train' or 'val', got {split!r}")
    kind, base = voc_layout(root)
    pairs, missing_img, missing_mask = [], [], []
    for i in ids:
        rel = check_relative(i, "ids")
        img, masks = _voc_image(kind, base, split, rel), _voc_masks(kind, base, split, rel)
        mask = next((m for m in masks if m.is_file()), None)
        if not img.is_file():
            missing_img.append(img)
        if mask is None and require_masks:
            missing_mask.append(masks[0])
        pairs.append((img, mask))
    if missing_img:
        raise missing_error(Path(root), "images listed in the split", missing_img, len(ids))
    if missing_mask:
        raise missing_error(Path(root), "label masks listed in the split", missing_mask, len(ids))
    return pairs


# Where a VOC id's mask is looked for, in order. Validation is scored against VOC's own masks (with
# their 255 borders) wherever VOC has one: trees made by other tools (mmsegmentation's voc_aug)
# hold SBD's masks, which have no borders, for VOC's val ids in SegmentationClassAug. Training
# takes the augmented masks first, the set the SBD-augmented recipes train on.
VOC_MASK_FOLDERS = {"train": ("SegmentationClassAug", "SegmentationClass"),
                    "val": ("SegmentationClass", "SegmentationClassAug")}


# The augmented train list's names: the kit's (``data voc-aug``, CPS's) and mmsegmentation's.
VOC_AUG_LISTS = ("trainaug.txt", "aug.txt")


def _voc_image(kind: str, base: Path, split: str, rel: str) -> Path:
    if kind == "cps":
        return under_root(base / ("train_aug" if split == "train" else "val") / "image", rel + ".jpg")
    return under_root(base / "JPEGImages", rel + ".jpg")


def _voc_masks(kind: str, base: Path, split: str, rel: str) -> list[Path]:
    if kind == "cps":
        return [under_root(base / ("train_aug" if split == "train" else "val") / "label", rel + ".png")]
    return [under_root(base / sub, rel + ".png") for sub in VOC_MASK_FOLDERS[split]]


def _voc_id_list(kind: str, base: Path, which: str) -> Path:
    if kind == "cps":
        return base / ("train_aug.txt" if which == "train" else "val.txt")
    sets = base / "ImageSets" / "Segmentation"
    if which == "val":
        return sets / "val.txt"
    # The augmented 10,582-image list when SBD labels are present, else the 1,464 VOC train list.
    if (base / "SegmentationClassAug").is_dir():
        for name in VOC_AUG_LISTS:
            if (sets / name).is_file():
                return sets / name
    return sets / "train.txt"


def voc_reader(kind: str, base: Path, split: str):
    """A split-list reader giving the VOC ids a list means in this tree: of each entry's readings
    (``splits.id_candidates``: a name with a space, else its first word) the first whose image
    exists, else the entry as written (the missing image is then named)."""
    def read(path) -> list[str]:
        out = []
        for entry in read_split_list(path):
            found = [c for c in id_candidates(entry)
                     if _voc_image(kind, base, split, check_relative(c, str(path))).is_file()]
            out.append(found[0] if found else entry)
        return out

    return read


def voc_id_list(root: str | Path, which: str) -> Path:
    """The id list file ``voc_splits`` reads for ``which`` ('train' or 'val') under a VOC data root.

    Standard layout: ImageSets/Segmentation/trainaug.txt, or mmsegmentation's aug.txt (with
    SegmentationClassAug), else train.txt, and val.txt; CPS layout: train_aug.txt, val.txt. The file
    may not exist (read_split_list says so).
    """
    if which not in ("train", "val"):
        raise KitError(f"which: expected 'train' or 'val', got {which!r}")
    kind, base = voc_layout(root)
    return _voc_id_list(kind, base, which)


def voc_splits(
    root: str | Path,
    labeled: str | int | float | None = "1/16",
    labeled_list: str | Path | None = None,
    unlabeled_list: str | Path | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(labeled_pairs, unlabeled_pairs, val_pairs) for PASCAL VOC 2012 (21 classes, 255 ignore).

    Lists may be in CPS's, U2PL's or UniMatch's format (``splits``). Validation masks come from VOC's
    own SegmentationClass where it has them (``VOC_MASK_FOLDERS``).

    Priority: explicit labeled_list (+ unlabeled_list, default = train list minus labeled ids);
    else the CPS layout's ``subset_train_aug/train_aug_labeled_1-N.txt`` for labeled = 1/N;
    else a seeded partition of the train list, written as ``train_aug_{labeled,unlabeled}_<tag>.txt``
    into out_dir when given. labeled=None: the whole train list is labeled, no unlabeled pairs.
    Unlabeled pairs carry their true mask when it exists (for analysis), else None.
    """
    kind, base = voc_layout(root)
    read = voc_reader(kind, base, "train")
    train_ids, unl_ids = choose_split(
        lambda: read(_voc_id_list(kind, base, "train")),
        labeled, labeled_list, unlabeled_list, seed, out_dir,
        subset_dir=base / "subset_train_aug" if kind == "cps" else None,
        reader=read,
    )  # fmt: skip
    val_ids = voc_reader(kind, base, "val")(_voc_id_list(kind, base, "val"))
    return (
        voc_files(root, train_ids, "train"),
        voc_files(root, unl_ids, "train", require_masks=False),
        voc_files(root, val_ids, "val"),
    )
