"""Real data sets on disk (PASCAL VOC 2012, Cityscapes, a folder of your own) and their splits.

A data set here is a list of (image_path, mask_path or None) pairs read by ``SegmentationFiles``.
Images are read as viewers show them (``read_image``: any format PIL reads, EXIF orientation
applied, 16-bit greyscale scaled). Split lists (CPS's, U2PL's and UniMatch's formats) and seeded
partitions are ``splits``'.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..constants import ALL_LABELED, FOLDER_CLASSES, IGNORE_INDEX
from ..errors import KitError
from ..files import read_class_names
from .splits import (check_relative, fraction_denominator, id_candidates, image_extensions, labeled_count,
                     make_partition, parse_labeled, read_pair_list, read_split_list, split_tag, write_split_list)
VOC_CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip
CITYSCAPES_CLASS_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
]  # fmt: skip

Pair = tuple[Path, "Path | None"]
_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
# What a bad file raises. Past PIL's pixel limit it only warns up to twice the limit: such an image
# passes a size check and then fills the memory of a run, so that warning counts as an error here.
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextmanager
def _opened(path):
    """``Image.open(path)`` with an image past PIL's pixel limit refused (one of ``READ_ERRORS``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            yield img


# The EXIF orientations that turn an image by a quarter (its stored width is its shown height).
_QUARTER_TURNS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # greyscale with more than 8 bits per pixel

# ----------------------------------------------------------------------------------------- reading


def _grey_to_8bit(img: Image.Image, path: Path) -> np.ndarray:
    """uint8 [H,W] of a greyscale image of more than 8 bits, scaled from its bit depth (16-bit
    0..65535 -> 0..255, rounded), not clipped: PIL's convert("RGB") clips at 255, so a 16-bit image's
    levels all but vanish. 32-bit integer images ('I') holding 8-bit values are taken as they are."""
    a = np.asarray(img)
    lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
    if img.mode == "I" and lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if lo < 0 or hi > 65535:
        raise KitError(f"{path}: greyscale values {lo}..{hi} do not fit 16 bits; expected an 8- or 16-bit image")
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def read_image(path) -> np.ndarray:
    """RGB uint8 [H,W,3] of an image file, as image viewers show it: any format and mode PIL reads,
    turned by its EXIF orientation (``ImageOps.exif_transpose``: a phone stores a portrait photo
    landscape and says so in EXIF), greyscale of 16 bits scaled to 8. KitError naming the file if it
    is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: image file not found")
    try:
        with _opened(path) as img:
            img.load()  # decode now so truncated files fail here, not later
            ImageOps.exif_transpose(img, in_place=True)
            if img.mode in _WIDE_GREY:
                return np.repeat(_grey_to_8bit(img, path)[..., None], 3, axis=2)
            return np.array(img.convert("RGB"))
    except READ_ERRORS as e:
        if isinstance(e, KitError):
            raise
        raise KitError(f"{path}: cannot read image (corrupt or truncated?): {e}") from None


def exif_orientation(path) -> int | None:
    """The EXIF orientation (1-8) of an image file, None when it has none or cannot be read."""
    try:
        with _opened(path) as img:
            value = img.getexif().get(_EXIF_ORIENTATION)
    except READ_ERRORS:
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image as ``read_image`` gives it (EXIF orientation applied), from the
    file's header, without decoding it; KitError naming the file when it cannot be read."""
    path = Path(path)
    try:
        with _opened(path) as img:
            w, h = img.size
            turned = img.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS
    except READ_ERRORS as e:
        raise KitError(f"{path}: cannot read image (corrupt or truncated?): {e}") from None
    return (h, w) if turned else (w, h)


def read_label_image(path) -> np.ndarray:
    """The values [H,W] of a single-channel label PNG, decoded whole ('P': the palette index, i.e. the
    class id), turned by its EXIF orientation as ``read_image`` turns images; KitError naming the file
    when it is missing, unreadable or not single-channel."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: label file not found")
    try:
        with _opened(path) as img:
            img.load()  # decode now so truncated files fail here, not later
            if img.mode not in _LABEL_MODES:
                raise KitError(
                    f"{path}: expected a single-channel ('L' or 'P') label image of class indices, got mode {img.mode}"
                )
            ImageOps.exif_transpose(img, in_place=True)
            return np.array(img)
    except READ_ERRORS as e:
        if isinstance(e, KitError):
            raise
        raise KitError(f"{path}: cannot read label image (corrupt or truncated?): {e}") from None


def label_values(mask: np.ndarray) -> np.ndarray:
    """The distinct values of a label array, sorted (bincount for uint8: far faster than unique)."""
    if mask.dtype == np.uint8:
        return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return np.unique(mask)


def bad_label_values(mask: np.ndarray, num_classes: int) -> list[int]:
    """The values of ``mask`` that are neither a class id in [0, num_classes) nor the ignore value."""
    present = label_values(mask)
    return present[((present >= num_classes) & (present != IGNORE_INDEX)) | (present < 0)].tolist()


def value_problem(mask: np.ndarray, num_classes: int) -> str | None:
    """The problem when ``mask`` holds values that are neither a class id nor the ignore value, else None."""
    bad = bad_label_values(mask, num_classes)
    if not bad:
        return None
    return f"label values {bad[:10]} outside [0, {num_classes}) and not the ignore value {IGNORE_INDEX}"


def read_mask(path, num_classes: int) -> np.ndarray:
    """Class ids [H,W] from a single-channel PNG; values must be in [0, C) or 255 (KitError naming the
    file and the values otherwise)."""
    mask = read_label_image(path)
    problem = value_problem(mask, num_classes)
    if problem:
        raise KitError(f"{path}: {problem}")
    return mask


def size_mismatch(image_path, image_hw: tuple, mask_path, mask_hw: tuple) -> str | None:
    """The problem when a mask is not the size of its image as shown (shapes as (H, W); ``read_image``
    applies EXIF orientation), else None. A mask of the stored, unturned size is told so."""
    if tuple(mask_hw) == tuple(image_hw):
        return None
    text = (f"label size {mask_hw[1]}x{mask_hw[0]} differs from image {image_path} size "
            f"{image_hw[1]}x{image_hw[0]}")
    orientation = exif_orientation(image_path)
    if tuple(mask_hw) == tuple(image_hw)[::-1] and orientation in _QUARTER_TURNS:
        text += (f" as viewers show it (EXIF orientation {orientation} turns the stored "
                 f"{image_hw[0]}x{image_hw[1]} pixels); expected the mask drawn on the image as shown")
    return text


class SegmentationFiles(Dataset):
    """Images and masks on disk; items are ``transform(Image uint8 [3,H,W], Mask int64 [H,W])``.

    pairs: (image_path, mask_path or None); a None mask reads as all 255 (unlabeled images).
    transform defaults to ``transforms.val_transform()``. Files are read lazily, so a bad file
    raises KitError (naming it) when its item is first loaded.
    """

    def __init__(self, pairs: Sequence[tuple], num_classes: int, transform: Callable | None = None):
        if num_classes < 1 or num_classes > IGNORE_INDEX:
            raise KitError(f"num_classes: expected 1..{IGNORE_INDEX}, got {num_classes}")
        if transform is None:
            from .transforms import val_transform

            transform = val_transform()
        self.pairs = [(Path(i), None if m is None else Path(m)) for i, m in pairs]
        self.num_classes, self.transform = num_classes, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def raw(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Item i before the transform: (Image uint8 [3,H,W], Mask int64 [H,W])."""
        img_path, mask_path = self.pairs[i]
        image = read_image(img_path)
        if mask_path is None:
            mask = np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
        else:
            mask = read_mask(mask_path, self.num_classes)
            problem = size_mismatch(img_path, image.shape[:2], mask_path, mask.shape)
            if problem:
                raise KitError(f"{mask_path}: {problem}")
        return (
            tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
            tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64))),
        )

    def __getitem__(self, i: int):
        return self.transform(*self.raw(i))


# ------------------------------------------------------------------------------------- layouts


def _under(root: Path, rel: str) -> Path:
    return root.joinpath(*rel.split("/"))


def _missing_error(root: Path, what: str, missing: list[Path], total: int) -> KitError:
    shown = ", ".join(str(p) for p in missing[:3])
    return KitError(f"{root}: {len(missing)} of {total} {what} not found, e.g. {shown}")


# --------------------------------------------------------------------------------------------- VOC


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
        raise _missing_error(Path(root), "images listed in the split", missing_img, len(ids))
    if missing_mask:
        raise _missing_error(Path(root), "label masks listed in the split", missing_mask, len(ids))
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
        return _under(base / ("train_aug" if split == "train" else "val") / "image", rel + ".jpg")
    return _under(base / "JPEGImages", rel + ".jpg")


def _voc_masks(kind: str, base: Path, split: str, rel: str) -> list[Path]:
    if kind == "cps":
        return [_under(base / ("train_aug" if split == "train" else "val") / "label", rel + ".png")]
    return [_under(base / sub, rel + ".png") for sub in VOC_MASK_FOLDERS[split]]


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


def _voc_reader(kind: str, base: Path, split: str):
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
    read = _voc_reader(kind, base, "train")
    train_ids, unl_ids = _choose_split(
        lambda: read(_voc_id_list(kind, base, "train")),
        labeled, labeled_list, unlabeled_list, seed, out_dir,
        subset_dir=base / "subset_train_aug" if kind == "cps" else None,
        reader=read,
    )  # fmt: skip
    val_ids = _voc_reader(kind, base, "val")(_voc_id_list(kind, base, "val"))
    return (
        voc_files(root, train_ids, "train"),
        voc_files(root, unl_ids, "train", require_masks=False),
        voc_files(root, val_ids, "val"),
    )


def _choose_split(all_train, labeled, labeled_list, unlabeled_list, seed, out_dir, subset_dir, reader):
    """Shared VOC/Cityscapes policy deciding (labeled entries, unlabeled entries)."""
    if unlabeled_list is not None and labeled_list is None:
        raise KitError("unlabeled_list: given without labeled_list (expected both, or labeled_list alone)")
    if labeled_list is not None:
        lab = reader(labeled_list)
        if unlabeled_list is not None:
            return lab, reader(unlabeled_list)
        return lab, _rest(all_train(), lab)
    if labeled is None:
        return all_train(), []
    labeled = parse_labeled(labeled)
    d = fraction_denominator(labeled)
    if subset_dir is not None and d is not None:
        lab_file = subset_dir / f"train_aug_labeled_1-{d}.txt"
        unl_file = subset_dir / f"train_aug_unlabeled_1-{d}.txt"
        if lab_file.is_file():
            lab = reader(lab_file)
            return lab, reader(unl_file) if unl_file.is_file() else _rest(all_train(), lab)
    lab, unl = make_partition(all_train(), labeled, seed)
    if out_dir is not None:
        tag = split_tag(labeled)
        write_split_list(Path(out_dir) / f"train_aug_labeled_{tag}.txt", lab)
        write_split_list(Path(out_dir) / f"train_aug_unlabeled_{tag}.txt", unl)
    return lab, unl


def _rest(all_items: list, taken: list) -> list:
    s = set(taken)
    return [x for x in all_items if x not in s]


# -------------------------------------------------------------------------------------- Cityscapes


def cityscapes_layout(root: str | Path) -> str:
    """'standard' (leftImg8bit/ + gtFine/) or 'cps' (images/ + segmentation/ + config_new/ lists)."""
    root = Path(root)
    if (root / "leftImg8bit" / "train").is_dir() and (root / "gtFine" / "train").is_dir():
        return "standard"
    if (root / "images" / "train").is_dir() and (root / "segmentation" / "train").is_dir():
        return "cps"
    state = "does not exist" if not root.exists() else "is in neither known layout"
    raise KitError(
        f"{root}: Cityscapes data root {state}; expected either the standard layout "
        "(leftImg8bit/{train,val}/<city>/*_leftImg8bit.png with gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png) "
        "or the CPS layout (images/{train,val}/*.png, segmentation/{train,val}/*_gtFine.png, config_new/{train,val}.txt)"
    )


def _cps_to_standard(img_rel: str, lbl_rel: str | None) -> tuple[str, str | None]:
    """Map a CPS list entry (images/train/jena_000078_000019.png) onto the standard Cityscapes tree."""
    parts = img_rel.split("/")
    split, stem = parts[-2], parts[-1].rsplit(".", 1)[0]
    city = stem.rsplit("_", 2)[0]
    img = f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"
    lbl = None if lbl_rel is None else f"gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png"
    return img, lbl


def _standard_to_cps(img_rel: str, lbl_rel: str | None) -> tuple[str, str | None]:
    """Map a standard entry (leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png) onto CPS's tree."""
    parts = img_rel.split("/")
    split, name = parts[1], parts[-1]
    stem = name[: -len("_leftImg8bit.png")] if name.endswith("_leftImg8bit.png") else name.rsplit(".", 1)[0]
    return f"images/{split}/{stem}.png", None if lbl_rel is None else f"segmentation/{split}/{stem}_gtFine.png"


def _implied_label(img_rel: str) -> str | None:
    """The label path of an entry that names its image only (U2PL's Cityscapes lists), as U2PL reads
    it: leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png -> gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png;
    CPS's images/<split>/<stem>.png -> segmentation/<split>/<stem>_gtFine.png; None for other paths."""
    parts = img_rel.split("/")
    if len(parts) >= 3 and parts[0] == "leftImg8bit" and parts[-1].endswith("_leftImg8bit.png"):
        return "/".join(["gtFine", *parts[1:-1], parts[-1][: -len("leftImg8bit.png")] + "gtFine_labelTrainIds.png"])
    if len(parts) >= 3 and parts[0] == "images":
        return "/".join(["segmentation", *parts[1:-1], parts[-1].rsplit(".", 1)[0] + "_gtFine.png"])
    return None


def _canonical(root: Path, entry: tuple[str, str | None]) -> tuple[str, str | None]:
    """The entry as it exists on disk: a missing label path is the one its image implies
    (``_implied_label``); CPS names are mapped to the standard tree if only that exists, and
    standard names to CPS's tree if only that exists."""
    img_rel, lbl_rel = entry
    if lbl_rel is None:
        lbl_rel = _implied_label(img_rel)
    if not _under(root, img_rel).is_file():
        if img_rel.startswith("images/"):
            mapped = _cps_to_standard(img_rel, lbl_rel)
        elif img_rel.startswith("leftImg8bit/"):
            mapped = _standard_to_cps(img_rel, lbl_rel)
        else:
            mapped = None
        if mapped is not None and _under(root, mapped[0]).is_file():
            return mapped
    return img_rel, lbl_rel


def _scan_standard(root: Path, split: str) -> list[tuple[str, str]]:
    base = root / "leftImg8bit" / split
    if not base.is_dir():
        raise KitError(f"{base}: Cityscapes split folder not found (expected leftImg8bit/{split}/<city>/)")
    out = []
    for p in sorted(base.glob("*/*_leftImg8bit.png")):
        stem = p.name[: -len("_leftImg8bit.png")]
        out.append(
            (f"leftImg8bit/{split}/{p.parent.name}/{p.name}", f"gtFine/{split}/{p.parent.name}/{stem}_gtFine_labelTrainIds.png")
        )
    if not out:
        raise KitError(f"{base}: no *_leftImg8bit.png images found (expected leftImg8bit/{split}/<city>/*.png)")
    return out


def cityscapes_files(root: str | Path, entries: Sequence[tuple[str, str | None]], require_masks: bool = True) -> list[Pair]:
    """Resolve root-relative (image, label) entries to paths under root.

    Entries in CPS naming are mapped onto the standard tree when only that exists. KitError listing
    missing images (and masks if require_masks; else such masks are None).
    """
    root = Path(root)
    pairs, missing_img, missing_mask = [], [], []
    for img_rel, lbl_rel in entries:
        img_rel = check_relative(img_rel, "entries")
        lbl_rel = None if lbl_rel is None else check_relative(lbl_rel, "entries")
        img_rel, lbl_rel = _canonical(root, (img_rel, lbl_rel))
        img, lbl = _under(root, img_rel), None if lbl_rel is None else _under(root, lbl_rel)
        if not img.is_file():
            missing_img.append(img)
        if lbl is not None and not lbl.is_file():
            if require_masks:
                missing_mask.append(lbl)
            lbl = None
        elif lbl is None and require_masks:
            raise KitError(f"{root}: entry {img_rel!r} has no label path (expected '<image>\\t<label>')")
        pairs.append((img, lbl))
    if missing_img:
        raise _missing_error(root, "images listed in the split", missing_img, len(entries))
    if missing_mask:
        raise _missing_error(root, "label masks listed in the split", missing_mask, len(entries))
    return pairs


def cityscapes_splits(
    root: str | Path,
    labeled: str | int | float | None = "1/16",
    labeled_list: str | Path | None = None,
    unlabeled_list: str | Path | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(labeled_pairs, unlabeled_pairs, val_pairs) for Cityscapes (19 train ids, 255 ignore).

    Lists are pair lists (CPS's tab-separated or UniMatch's space-separated) or image paths alone
    (U2PL: the label path follows from the image's); the train/val sets come from
    ``config_new/{train,val}.txt`` when present, else from scanning leftImg8bit/. Same priority as
    ``voc_splits``, with CPS subset lists looked up in ``config_new/subset_train/``.
    """
    root = Path(root)
    cityscapes_layout(root)  # a wrong root fails first, naming both layouts

    def read(path) -> list[tuple[str, str | None]]:
        # Canonical names, so "train minus labeled" works across CPS and standard naming.
        return [_canonical(root, e) for e in read_pair_list(path)]

    lab, unl = _choose_split(
        lambda: cityscapes_entries(root, "train"), labeled, labeled_list, unlabeled_list, seed, out_dir,
        subset_dir=root / "config_new" / "subset_train", reader=read,
    )  # fmt: skip
    return (
        cityscapes_files(root, lab),
        cityscapes_files(root, unl, require_masks=False),
        cityscapes_files(root, cityscapes_entries(root, "val")),
    )


def cityscapes_entries(root: str | Path, split: str) -> list[tuple[str, str | None]]:
    """Root-relative (image, label) entries of a Cityscapes split ('train' or 'val'), as
    ``cityscapes_splits`` reads them: ``config_new/<split>.txt`` when present (names mapped onto the
    standard tree where only that exists), else the scanned leftImg8bit/<split>/<city>/ images."""
    root = Path(root)
    kind = cityscapes_layout(root)
    lst = root / "config_new" / f"{split}.txt"
    if lst.is_file():
        return [_canonical(root, e) for e in read_pair_list(lst)]
    if kind == "cps":
        raise KitError(f"{lst}: split list not found (the CPS Cityscapes layout needs config_new/{split}.txt)")
    return _scan_standard(root, split)


# ------------------------------------------------------------------------------------------ folder

# Every image format PIL decodes here (.jpg, .png, .webp, .bmp, .tif, ...): a folder of photos is
# read whole, not only its JPEGs and PNGs. Masks stay PNGs (lossless class ids).
_COMMON = (".jpg", ".jpeg", ".png")  # first, where the suffixes are listed to a user
IMAGE_SUFFIXES = _COMMON + tuple(e for e in image_extensions() if e not in _COMMON)
IMAGE_FILES = "image files PIL reads: .jpg, .png, .webp, .bmp, .tif, ..."  # IMAGE_SUFFIXES in words
_LOSSY = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")
# The seed of a folder tree's validation split when it has no val/ folder: fixed, so runs of every
# seed are scored on the same images.
FOLDER_VAL_SEED = 0
# Share of the masked images held out for validation when there is no val/ folder.
FOLDER_VAL_FRACTION = 0.2


def folder_class_names(root: str | Path) -> list[str]:
    """The class names of a folder data set, from ``ROOT/classes.txt`` (line number = class id)."""
    return read_class_names(Path(root) / FOLDER_CLASSES)


def _visible_files(folder: Path) -> list[Path]:
    """The files of a folder, sorted, less hidden ones (``.DS_Store``, macOS's ``._photo.jpg``
    resource forks), which are no one's images."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]


def _scan_split(images: Path, masks: Path, need_masks: bool, problems: list) -> list[Pair]:
    """(image, mask or None) of one split folder, by name; every problem appended as (path, text)."""
    if not images.is_dir():
        problems.append((images, "folder not found (a folder data set keeps its images in images/)"))
        return []
    by_stem: dict[str, Path] = {}
    unread: dict[str, Path] = {}  # files PIL has no reader for here (.heic without its plugin, .raw)
    for p in _visible_files(images):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            unread.setdefault(p.stem, p)
            continue
        if p.stem in by_stem:
            problems.append((p, f"two images share the name {p.stem!r} ({by_stem[p.stem].name} too); a "
                                f"mask is found by the image's name, so each must be unique"))
            continue
        by_stem[p.stem] = p
    if not by_stem:
        problems.append((images, f"no images (expected {IMAGE_FILES})"))
    mask_of: dict[str, Path] = {}
    for p in _visible_files(masks) if masks.is_dir() else []:
        suffix = p.suffix.lower()
        if suffix == ".png":
            mask_of[p.stem] = p
        elif suffix in IMAGE_SUFFIXES:
            why = " (lossy: class ids blur at the edges)" if suffix in _LOSSY else ""
            problems.append((p, f"a mask must be a PNG (lossless), not {suffix}{why}"))
    for stem in sorted(set(mask_of) - set(by_stem)):
        if stem in unread:
            problems.append((unread[stem], f"has a mask ({mask_of[stem].name}) but is no format PIL reads here "
                                           f"(expected {IMAGE_FILES}; convert it, e.g. to .jpg)"))
            continue
        problems.append((mask_of[stem], f"mask without an image (expected {images}/{stem} as .jpg, .png or "
                                        f"another format PIL reads)"))
    pairs = [(img, mask_of.get(stem)) for stem, img in by_stem.items()]
    if need_masks:
        for img, mask in pairs:
            if mask is None:
                problems.append((masks / f"{img.stem}.png", f"validation image {img.name} has no mask"))
    return pairs


def folder_scan(root: str | Path) -> tuple[list[Pair], list[Pair], list[tuple[Path, str]]]:
    """(train pairs, val pairs, problems) of a folder data set, without stopping at the first
    problem (``python -m cpcl_kit data check`` lists them all; ``folder_pairs`` stops). Problems are
    (path, what is wrong): a missing or empty images/ folder, two images of one name, a mask without
    an image, a validation image without a mask. Mask contents are read later, per file."""
    root = Path(root)
    problems: list[tuple[Path, str]] = []
    train = _scan_split(root / "images", root / "masks", False, problems)
    val_dir = root / "val"
    val = _scan_split(val_dir / "images", val_dir / "masks", True, problems) if val_dir.is_dir() else []
    return train, val, problems


def folder_pairs(root: str | Path) -> tuple[list[Pair], list[Pair]]:
    """(train pairs, val pairs) of a folder data set; val pairs are empty when ROOT/val is absent.

    Layout: ``images/<name>.<any format PIL reads>``, ``masks/<same name>.png`` (one channel of class
    ids, 255 = no label; palette PNGs are read by index), ``classes.txt``, optional ``val/images`` +
    ``val/masks`` (every validation image needs its mask; hidden files are skipped). A train image
    without a mask is unlabeled. KitError naming the file or folder of the first problem
    ``folder_scan`` finds.
    """
    root = Path(root)
    if not root.is_dir():
        raise KitError(f"{root}: folder data set not found (expected images/, masks/, {FOLDER_CLASSES})")
    folder_class_names(root)
    train, val, problems = folder_scan(root)
    if problems:
        path, text = problems[0]
        more = f"; {len(problems) - 1} more problems (python -m cpcl_kit data check {root} lists them)" \
            if len(problems) > 1 else ""
        raise KitError(f"{path}: {text}{more}")
    return train, val


def folder_splits(
    root: str | Path,
    labeled: str | int | float | None = None,
    labeled_list: str | Path | None = None,
    unlabeled_list: str | Path | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(labeled_pairs, unlabeled_pairs, val_pairs) of a folder data set (``folder_pairs``).

    Labeled part, by priority: labeled_list (+ unlabeled_list) given; else, when ``labeled`` asks for
    no part (None or "all"), ``ROOT/labeled.txt`` (+ ``unlabeled.txt``) when present (CPS format: one
    image name per line, without extension, spaces allowed; an image path such as images/x.jpg names
    x); else every image with a mask (None, "all"), or a seeded part of them (1/N or a count; the rest
    are unlabeled). Unlabeled: the images without masks plus the
    masked ones left out; when there are none, the labeled images are seen unlabeled too (as the
    digit scenes' full supervision). Unlabeled pairs keep their masks.

    Validation: ``val/`` when present, else ``FOLDER_VAL_FRACTION`` of the images with masks (at least
    one), drawn with ``FOLDER_VAL_SEED`` whatever the run's seed, from those a split list does not
    name as labeled.
    """
    root = Path(root)
    train, val = folder_pairs(root)
    own = labeled_list is None and unlabeled_list is None and (labeled is None or labeled == ALL_LABELED)
    if own and (root / "labeled.txt").is_file():
        labeled_list = root / "labeled.txt"
        unlabeled_list = root / "unlabeled.txt" if (root / "unlabeled.txt").is_file() else None
    elif own and (root / "unlabeled.txt").is_file():
        raise KitError(f"{root / 'unlabeled.txt'}: found without labeled.txt (expected both, or labeled.txt alone)")
    lists = labeled_list is not None or unlabeled_list is not None
    by_stem = {img.stem: (img, mask) for img, mask in train}
    if lists:
        lab_ids, unl_ids = _choose_split(lambda: list(by_stem), None, labeled_list, unlabeled_list, seed,
                                         out_dir, None, folder_list_reader(by_stem))
        lab = [_listed(by_stem, i, labeled_list, need_mask=True) for i in lab_ids]
    masked = [p for p in train if p[1] is not None]
    if not val:
        if len(masked) < 2:
            raise KitError(f"{root}: {len(masked)} image(s) with masks; without a val/ folder the "
                           f"validation images come from the masked ones, so at least 2 are needed")
        named = set(lab_ids) if lists else set()
        pool = [p for p in masked if p[0].stem not in named]
        if not pool:
            raise KitError(f"{labeled_list}: names every image with a mask as labeled; without a val/ folder "
                           f"some must stay for validation")
        n_val = min(len(pool), max(1, round(FOLDER_VAL_FRACTION * len(masked))))
        chosen = set(np.random.default_rng(FOLDER_VAL_SEED).permutation(len(pool))[:n_val].tolist())
        val = [p for i, p in enumerate(pool) if i in chosen]
        held = {img.stem for img, _ in val}
        train = [p for p in train if p[0].stem not in held]
        masked = [p for p in masked if p[0].stem not in held]
        if lists:
            unl_ids = [i for i in unl_ids if i not in held]
    unmasked = [p for p in train if p[1] is None]
    if not masked:
        raise KitError(f"{root / 'masks'}: no masks for the training images (expected <image name>.png)")
    if lists:
        unl = [_listed(by_stem, i, unlabeled_list or labeled_list, need_mask=False) for i in unl_ids]
    elif labeled is None or labeled == ALL_LABELED:
        lab, unl = masked, unmasked
    elif unmasked and labeled_count(len(masked), parse_labeled(labeled)) == len(masked):
        lab, unl = masked, unmasked  # every masked image asked for: the unlabeled ones have no mask
    else:
        lab, rest = make_partition(masked, labeled, seed)
        unl = rest + unmasked
        if out_dir is not None:
            tag = split_tag(parse_labeled(labeled))
            write_split_list(Path(out_dir) / f"labeled_{tag}.txt", [img.stem for img, _ in lab])
            write_split_list(Path(out_dir) / f"unlabeled_{tag}.txt", [img.stem for img, _ in unl])
    return lab, unl or list(lab), val


def folder_list_reader(names):
    """A split-list reader giving the image names a list means among ``names`` (a folder's image
    names): of each entry's readings (``splits.id_candidates``: a name with a space, else its first
    word) the first that is an image's name, else the entry as written (then named as not found)."""
    def read(path) -> list[str]:
        return [next((c for c in id_candidates(e) if c in names), e) for e in read_split_list(path)]

    return read


def _listed(by_stem: dict, name: str, listed_in, need_mask: bool) -> Pair:
    if name not in by_stem:
        raise KitError(f"{listed_in}: {name!r} is not a training image of the folder (expected a name "
                       f"from images/ without extension, not one held out for validation)")
    pair = by_stem[name]
    if need_mask and pair[1] is None:
        raise KitError(f"{listed_in}: {name!r} is listed as labeled but masks/{name}.png does not exist")
    return pair


# ------------------------------------------------------------------------------- any data set's lists


def list_entries(dataset: str, root: str | Path, path: str | Path, split: str = "train") -> list:
    """The entries of a split list as a run on ``dataset`` ('voc', 'cityscapes', 'folder') under
    ``root`` reads them: VOC ids (of ``split``'s images), Cityscapes (image, label) root-relative
    pairs, folder image names. KitError naming the list when it is missing, empty or names a path
    outside the root."""
    root = Path(root)
    if dataset == "voc":
        kind, base = voc_layout(root)
        return _voc_reader(kind, base, split)(path)
    if dataset == "cityscapes":
        return [_canonical(root, e) for e in read_pair_list(path)]
    if dataset == "folder":
        train, _, _ = folder_scan(root)
        return folder_list_reader({img.stem for img, _ in train})(path)
    raise KitError(f"dataset: expected voc, cityscapes or folder, got {dataset!r}")


def list_pairs(dataset: str, root: str | Path, entries: Sequence, listed_in, labeled: bool) -> list[Pair]:
    """(image, mask or None) of ``list_entries``' entries among a data set's training images; KitError
    naming the first entry without its image (or, ``labeled``, its mask)."""
    root = Path(root)
    if dataset == "voc":
        return voc_files(root, entries, "train", require_masks=labeled)
    if dataset == "cityscapes":
        return cityscapes_files(root, entries, require_masks=labeled)
    train, _, _ = folder_scan(root)
    by_stem = {img.stem: (img, mask) for img, mask in train}
    return [_listed(by_stem, e, listed_in, need_mask=labeled) for e in entries]
