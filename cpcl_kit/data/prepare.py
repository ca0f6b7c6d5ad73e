"""Real data made ready for the kit, and a tree checked before a run (``python -m cpcl_kit data ...``).

``voc_aug``: PASCAL VOC 2012 + SBD -> ``SegmentationClassAug/<id>.png`` masks and the train_aug /
val id lists, in a folder that ``--dataset voc --data-root`` reads as it is.
``cityscapes_train_ids``: Cityscapes ``*_gtFine_labelIds.png`` (label ids 0..33) -> ``*_gtFine_labelTrainIds.png``
(the 19 training classes, 255 ignored) beside them.
``check_data``: image counts, pixels per class, image sizes and every problem of a tree, as tables.

Both writers are resumable and idempotent: every file goes through ``files.write_atomic`` (a kill leaves
the old file or the new one), and a valid output already there is kept, so running a command again
finishes what a killed run left and otherwise writes nothing.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..constants import IGNORE_INDEX
from ..errors import KitError
from ..files import write_atomic, write_text
from .cityscapes import (CITYSCAPES_CLASS_NAMES, canonical_pair, cityscapes_entries, cityscapes_files,
                         cityscapes_splits)
from .folder import folder_class_names, folder_list_reader, folder_scan, folder_splits, listed_pair
from .images import (READ_ERRORS, Pair, image_size, label_values, read_image, read_label_image, read_mask,
                     size_mismatch, value_problem)
from .splits import read_pair_list, read_split_list
from .voc import VOC_CLASS_NAMES, voc_files, voc_id_list, voc_layout, voc_reader, voc_splits

# The image counts of the standard VOC 2012 + SBD ("aug") splits: train_aug is VOC train ∪ SBD train ∪
# SBD val minus VOC val; val is VOC val.
VOC_AUG_TRAIN, VOC_VAL = 10_582, 1_449

# ------------------------------------------------------------------------------------------ shared


def _missing(what: str, missing: list[Path], total: int, expected: str) -> KitError:
    shown = ", ".join(str(p) for p in missing[:3])
    return KitError(f"{len(missing)} of {total} {what} not found, e.g. {shown} (expected {expected})")


def _kept(path: Path, size: tuple[int, int], allowed: set[int], same_as: np.ndarray | None = None) -> bool:
    """Whether an output mask already there is whole: an 'L' PNG that decodes to the end, of ``size``
    (width, height), with only ``allowed`` values and, when ``same_as`` is given, those values.
    Anything else (a file copied in part, another tool's output) is written again."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "L" or img.size != size:
                return False
            values = np.array(img)
    except READ_ERRORS:
        return False
    if same_as is not None:
        return np.array_equal(values, same_as)
    return set(label_values(values).tolist()) <= allowed


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the kit reads the image (EXIF orientation applied), from its header."""
    return image_size(path)


def _write_png(path: Path, mask: np.ndarray) -> None:
    """uint8 [H,W] as an 'L' PNG, atomically. PIL writes no time stamp: the same array gives the same bytes."""
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    write_atomic(path, lambda f: img.save(f, format="PNG"))


def _write_list(path: Path, ids: Sequence[str]) -> bool:
    """One id per line; written only when the file's bytes differ (True when written)."""
    text = "".join(f"{i}\n" for i in ids)
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return False
    write_text(path, text)
    return True


# ----------------------------------------------------------------------------------- VOC + SBD


@dataclass
class VocAug:
    """What ``voc_aug`` made: the prepared root and its counts."""

    root: Path
    train_aug: int      # ids in ImageSets/Segmentation/trainaug.txt
    val: int            # ids in ImageSets/Segmentation/val.txt
    written: int        # masks written by this call
    kept: int           # valid masks already there, left as they were
    from_voc: int       # masks taken from VOC's SegmentationClass (they win where both exist)
    from_sbd: int       # masks converted from SBD's cls/<id>.mat
    replaced: int = 0   # of those written, masks there that differed from VOC's own (another tool's SBD masks)

    @property
    def standard(self) -> bool:
        """Whether the counts are those of the full VOC 2012 + SBD (10,582 / 1,449)."""
        return (self.train_aug, self.val) == (VOC_AUG_TRAIN, VOC_VAL)


def _voc_base(voc: Path) -> Path:
    for base in (voc, voc / "VOC2012", voc / "VOCdevkit" / "VOC2012"):
        if (base / "JPEGImages").is_dir() and (base / "SegmentationClass").is_dir():
            return base
    state = "folder not found" if not voc.exists() else "holds no VOC 2012 tree"
    raise KitError(f"{voc}: VOC {state} (expected VOCdevkit/VOC2012 with JPEGImages/<id>.jpg, "
                   f"SegmentationClass/<id>.png and ImageSets/Segmentation/train.txt, val.txt)")


def _sbd_base(sbd: Path) -> Path:
    for base in (sbd / "dataset", sbd):
        if (base / "cls").is_dir():
            return base
    state = "folder not found" if not sbd.exists() else "holds no dataset/cls/ folder"
    raise KitError(f"{sbd}: SBD {state} (expected benchmark_RELEASE with dataset/cls/<id>.mat, "
                   f"dataset/train.txt and dataset/val.txt)")


def read_sbd_mask(path: str | Path, num_classes: int = len(VOC_CLASS_NAMES)) -> np.ndarray:
    """Class ids uint8 [H,W] of an SBD ``cls/<id>.mat`` (MATLAB struct ``GTcls``, field ``Segmentation``).

    KitError naming the file when it cannot be read, lacks the field, is not 2-D, or holds values
    outside [0, num_classes) other than 255.
    """
    from scipy.io import loadmat  # only this command needs scipy
    from scipy.io.matlab import MatReadError

    path = Path(path)
    try:
        seg = np.asarray(loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation)
    except (MatReadError, OSError, ValueError, KeyError, AttributeError, TypeError, NotImplementedError) as e:
        raise KitError(f"{path}: cannot read SBD mask (expected a MATLAB file with the struct "
                       f"GTcls.Segmentation): {type(e).__name__}: {e}") from None
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise KitError(f"{path}: GTcls.Segmentation is {seg.dtype} of shape {seg.shape}, expected 2-D class ids")
    problem = value_problem(seg, num_classes)
    if problem:
        raise KitError(f"{path}: {problem}")
    return seg.astype(np.uint8)


def _link_images(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (absolute), made atomically; a folder or link already there is kept."""
    if link.exists():  # JPEGImages of the VOC tree itself (out = VOC2012), or the user's own copy
        return
    tmp = link.with_name(f".{link.name}.tmp-link")
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        os.symlink(target.resolve(), tmp, target_is_directory=True)
        os.replace(tmp, link)  # also replaces a dangling link left where the VOC tree moved
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KitError(f"{link}: cannot link to {target} ({e.strerror or e}); expected a folder this "
                       f"user may write to (or copy JPEGImages there yourself)") from None


def voc_aug(voc: str | Path, sbd: str | Path, out: str | Path, progress: bool = True) -> VocAug:
    """VOC 2012 + SBD -> the "aug" training set, in ``out``, ready for ``--dataset voc --data-root out``.

    voc: the VOC2012 folder (or VOCdevkit, or the folder holding VOCdevkit/); sbd: benchmark_RELEASE
    (or its dataset/). Writes, in the standard VOC layout that ``voc_layout`` reads:

    - ``out/SegmentationClassAug/<id>.png``: 'L' PNG, uint8 class ids 0..20, 255 ignore, for every
      train_aug and val id. VOC's SegmentationClass mask (palette index = class, borders 255) where
      there is one, else SBD's ``cls/<id>.mat`` (no borders: SBD has no ignore band).
    - ``out/ImageSets/Segmentation/trainaug.txt``: (VOC train ∪ SBD train ∪ SBD val) minus VOC val,
      sorted (10,582 ids for the full sets); ``val.txt``: VOC val (1,449).
    - ``out/JPEGImages``: a symbolic link to VOC's JPEGImages (images are not copied; a folder or
      link already there is used as it is). ``out`` may be the VOC2012 folder itself: then only
      SegmentationClassAug/ and trainaug.txt are added beside VOC's own files.

    Masks already there that decode whole, at the image's size and with valid values, are kept: a
    second call writes nothing. Where VOC has its own mask, the one there is kept only if it is VOC's:
    a tree made by mmsegmentation's converter holds SBD's masks (no 255 borders) for VOC ids, the val
    ids among them, and those are replaced (``replaced``) rather than reported as VOC's. KitError (one
    line naming the path and what was expected) for a missing folder, list, image or mask source, and
    for an unreadable or mis-sized mask.
    """
    voc, sbd, out = Path(voc), Path(sbd), Path(out)
    base, sbd_base = _voc_base(voc), _sbd_base(sbd)
    if out.exists() and not out.is_dir():
        raise KitError(f"{out}: is a file, expected a folder for the prepared VOC tree")
    for nested in (out / "VOCdevkit" / "VOC2012", out / "VOC2012"):
        # the reader looks there before out itself, and would miss the prepared masks
        if (nested / "JPEGImages").is_dir():
            raise KitError(f"{out}: holds a VOC tree at {nested}, which --data-root {out} would read instead; "
                           f"expected another output folder (or {nested} itself)")

    sets = base / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_split_list(sets / "train.txt"), read_split_list(sets / "val.txt")
    sbd_train, sbd_val = read_split_list(sbd_base / "train.txt"), read_split_list(sbd_base / "val.txt")
    val = sorted(set(voc_val))
    train_aug = sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(val))

    ids = sorted(set(train_aug) | set(val))
    images = {i: base / "JPEGImages" / f"{i}.jpg" for i in ids}
    sources: dict[str, Path] = {}
    missing_img, missing_mask = [], []
    for i in ids:
        if not images[i].is_file():
            missing_img.append(images[i])
        voc_png, sbd_mat = base / "SegmentationClass" / f"{i}.png", sbd_base / "cls" / f"{i}.mat"
        src = voc_png if voc_png.is_file() else sbd_mat if sbd_mat.is_file() else None
        if src is None:
            missing_mask.append(sbd_mat)
        else:
            sources[i] = src
    if missing_img:
        raise _missing("train_aug/val images", missing_img, len(ids), f"{base / 'JPEGImages'}/<id>.jpg")
    if missing_mask:
        raise _missing("train_aug/val masks", missing_mask, len(ids),
                       f"{base / 'SegmentationClass'}/<id>.png or {sbd_base / 'cls'}/<id>.mat")

    num_classes = len(VOC_CLASS_NAMES)
    allowed = set(range(num_classes)) | {IGNORE_INDEX}
    masks = out / "SegmentationClassAug"
    written = kept = replaced = 0
    for i in tqdm(ids, desc="voc-aug masks", unit="mask", disable=not progress, leave=False):
        dst, src = masks / f"{i}.png", sources[i]
        size = _image_size(images[i])
        voc_mask = read_mask(src, num_classes) if src.suffix == ".png" else None
        if _kept(dst, size, allowed, same_as=voc_mask):
            kept += 1
            continue
        if voc_mask is not None and _kept(dst, size, allowed):
            replaced += 1  # a valid mask, but not VOC's: SBD's, from another tool
        mask = voc_mask if voc_mask is not None else read_sbd_mask(src, num_classes)
        if mask.shape != (size[1], size[0]):
            raise KitError(f"{src}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                           f"{images[i]} size {size[0]}x{size[1]}")
        _write_png(dst, mask)
        written += 1

    _write_list(out / "ImageSets" / "Segmentation" / "trainaug.txt", train_aug)
    _write_list(out / "ImageSets" / "Segmentation" / "val.txt", val)
    _link_images(out / "JPEGImages", base / "JPEGImages")

    # The reader itself confirms the tree: every listed id has its image and mask, trainaug.txt is read.
    lab, _, val_pairs = voc_splits(out, labeled=None)
    if len(lab) != len(train_aug) or len(val_pairs) != len(val):
        raise KitError(f"{out}: the VOC reader finds {len(lab)} train / {len(val_pairs)} val images, "
                       f"expected {len(train_aug)} / {len(val)}")
    from_voc = sum(s.suffix == ".png" for s in sources.values())
    return VocAug(out, len(train_aug), len(val), written, kept, from_voc, len(sources) - from_voc, replaced)


# ------------------------------------------------------------------------------------ Cityscapes

# (labelId, name, trainId) of the 34 Cityscapes labels and the licence plate, as cityscapesScripts'
# labels.py lists them; trainId 255 = not trained on (its -1 for the licence plate also becomes 255).
# The 19 trained classes, in trainId order, are CITYSCAPES_CLASS_NAMES.
CITYSCAPES_LABELS = (
    (0, "unlabeled", 255), (1, "ego vehicle", 255), (2, "rectification border", 255),
    (3, "out of roi", 255), (4, "static", 255), (5, "dynamic", 255), (6, "ground", 255),
    (7, "road", 0), (8, "sidewalk", 1), (9, "parking", 255), (10, "rail track", 255),
    (11, "building", 2), (12, "wall", 3), (13, "fence", 4), (14, "guard rail", 255),
    (15, "bridge", 255), (16, "tunnel", 255), (17, "pole", 5), (18, "polegroup", 255),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8), (22, "terrain", 9),
    (23, "sky", 10), (24, "person", 11), (25, "rider", 12), (26, "car", 13), (27, "truck", 14),
    (28, "bus", 15), (29, "caravan", 255), (30, "trailer", 255), (31, "train", 16),
    (32, "motorcycle", 17), (33, "bicycle", 18), (-1, "license plate", 255),
)  # fmt: skip

# labelId -> trainId for every uint8 value; ids the table does not name are ignored (255).
_TRAIN_ID_LUT = np.full(256, IGNORE_INDEX, np.uint8)
_TRAIN_ID_LUT[[i for i, _, _ in CITYSCAPES_LABELS if i >= 0]] = [t for i, _, t in CITYSCAPES_LABELS if i >= 0]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds (any integer array, e.g. uint8 [H,W]) -> trainIds uint8 of the same shape.

    road 7 -> 0, ..., bicycle 33 -> 18 (``CITYSCAPES_LABELS``); every other value, -1 included, -> 255.
    """
    a = np.asarray(label_ids)
    if a.dtype == np.uint8:
        return _TRAIN_ID_LUT[a]
    out = np.full(a.shape, IGNORE_INDEX, np.uint8)
    inside = (a >= 0) & (a < 256)
    out[inside] = _TRAIN_ID_LUT[a[inside].astype(np.int64)]
    return out


@dataclass
class TrainIds:
    """What ``cityscapes_train_ids`` did: files written and kept, per split (train, val, test)."""

    root: Path
    written: int
    kept: int
    per_split: dict = field(default_factory=dict)  # {split: number of labelIds files}


def cityscapes_train_ids(root: str | Path, progress: bool = True) -> TrainIds:
    """Write ``<stem>_gtFine_labelTrainIds.png`` beside every ``gtFine/{train,val,test}/<city>/<stem>_gtFine_labelIds.png``.

    Output: 'L' PNG, uint8 trainIds 0..18 and 255 (``label_ids_to_train_ids``), the labelIds file's
    size. Outputs already there that decode whole, at that size and with valid values, are kept.
    KitError naming the folder when root has no gtFine/ or no labelIds files in it.
    """
    root = Path(root)
    gt = root / "gtFine"
    if not gt.is_dir():
        state = "data root not found" if not root.exists() else "has no gtFine/ folder"
        raise KitError(f"{root}: Cityscapes {state} (expected gtFine/{{train,val,test}}/<city>/*_gtFine_labelIds.png)")
    files = {split: sorted((gt / split).glob("*/*_gtFine_labelIds.png")) for split in ("train", "val", "test")}
    todo = [p for split in files for p in files[split]]
    if not todo:
        raise KitError(f"{gt}: no *_gtFine_labelIds.png files (expected gtFine/{{train,val,test}}/<city>/*_gtFine_labelIds.png)")
    allowed = set(range(len(CITYSCAPES_CLASS_NAMES))) | {IGNORE_INDEX}
    written = kept = 0
    for src in tqdm(todo, desc="labelTrainIds", unit="file", disable=not progress, leave=False):
        dst = src.with_name(src.name[: -len("_labelIds.png")] + "_labelTrainIds.png")
        if _kept(dst, _image_size(src), allowed):
            kept += 1
            continue
        _write_png(dst, label_ids_to_train_ids(read_label_image(src)))
        written += 1
    return TrainIds(root, written, kept, {s: len(f) for s, f in files.items() if f})


# --------------------------------------------------------------------------------------- checking


def _without_path(e: KitError, path: Path) -> str:
    """A reader's one-line message without the file name it starts with (the table shows the file)."""
    return " ".join(str(e).split()).removeprefix(f"{path}: ")


@dataclass
class PairCheck:
    """What ``check_pairs`` found in one split."""

    split: str
    images: int = 0                      # pairs checked
    labeled: int = 0                     # of them with a mask
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # [256] per label value
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    problems: list = field(default_factory=list)     # (split, file, problem)


def check_pairs(pairs: Sequence[tuple], num_classes: int, split: str = "train", masks_required: bool = False,
                progress: bool = True) -> PairCheck:
    """Read every (image, mask or None) pair whole, as training would, and list what is wrong.

    Problems (each names its file): image or mask missing or unreadable, a mask that is not
    single-channel, label values >= num_classes other than 255, mask and image of different sizes,
    and (masks_required) an image without a mask. ``pixels`` counts the label values of the masks
    without bad values (index 255: ignored pixels); ``sizes`` counts the readable images' sizes.
    """
    res = PairCheck(split)
    for img_path, mask_path in tqdm(pairs, desc=f"check {split}", unit="img", disable=not progress, leave=False):
        res.images += 1
        img_path, hw = Path(img_path), None
        try:  # the readers a run uses, so that the check finds what the run would stop at
            hw = read_image(img_path).shape[:2]
            res.sizes[(hw[1], hw[0])] += 1
        except KitError as e:
            res.problems.append((split, str(img_path), _without_path(e, img_path)))
        if mask_path is None:
            if masks_required:
                res.problems.append((split, str(img_path), "no label mask (every image of this split needs one)"))
            continue
        res.labeled += 1
        mask_path = Path(mask_path)
        try:
            mask = read_label_image(mask_path)
        except KitError as e:
            res.problems.append((split, str(mask_path), _without_path(e, mask_path)))
            continue
        problems = [hw and size_mismatch(img_path, hw, mask_path, mask.shape), value_problem(mask, num_classes)]
        res.problems += [(split, str(mask_path), p) for p in problems if p]
        if not problems[1]:  # the histogram counts masks whose every value is a class or ignored
            res.pixels += np.bincount(mask.ravel().astype(np.int64), minlength=256)[:256]
    return res


def guess_dataset(root: str | Path) -> str:
    """'voc', 'cityscapes' or 'folder' from the tree's folders; KitError naming what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise KitError(f"{root}: data root not found (expected a VOC, Cityscapes or folder data set)")
    try:
        voc_layout(root)
        return "voc"
    except KitError:
        pass
    if (root / "leftImg8bit").is_dir() or (root / "segmentation").is_dir():
        return "cityscapes"
    if (root / "images").is_dir():
        return "folder"
    raise KitError(f"{root}: cannot tell the data set (expected JPEGImages/ + SegmentationClass*/ for VOC, "
                   f"leftImg8bit/ for Cityscapes or images/ for a folder data set); give --dataset")


def _resolve_each(resolve: Callable[[list], list], entries: list, split: str, root: Path) -> tuple[list, list]:
    """The readers stop at the first bad entry of a list: read it whole, else entry by entry so that
    every bad entry is its own problem (the reader's message, naming the file)."""
    try:
        return resolve(entries), []
    except KitError:
        pass
    pairs, problems = [], []
    for e in entries:
        try:
            pairs += resolve([e])
        except KitError as err:
            msg = " ".join(str(err).split()).removeprefix(f"{root}: ")
            # "1 of 1 images listed in the split not found, e.g. <path>" says, for one entry: not found: <path>
            one = re.fullmatch(r"1 of 1 .+? not found, e\.g\. (.+)", msg)
            problems.append((split, e if isinstance(e, str) else e[0], f"not found: {one[1]}" if one else msg))
    return pairs, problems


def _reader_pairs(root: Path, dataset: str) -> tuple[dict, list, list[str]]:
    """({split: pairs}, problems, class names) of a data set through the kit's own readers."""
    pairs, problems = {}, []
    for split in ("train", "val"):
        try:
            if dataset == "voc":
                entries = list_entries("voc", root, voc_id_list(root, split), split)
                resolve = lambda e, s=split: voc_files(root, e, s)  # noqa: E731
            else:
                entries = cityscapes_entries(root, split)
                resolve = lambda e: cityscapes_files(root, e)  # noqa: E731
        except KitError as e:
            pairs[split] = []
            problems.append((split, str(root), " ".join(str(e).split())))
            continue
        pairs[split], found = _resolve_each(resolve, entries, split, root)
        problems += found
    names = VOC_CLASS_NAMES if dataset == "voc" else CITYSCAPES_CLASS_NAMES
    return pairs, problems, list(names)


def _folder_pairs(root: Path) -> tuple[dict, list, list[str]]:
    names = folder_class_names(root)  # without the classes no value can be checked: a KitError
    train, val, found = folder_scan(root)
    splits = {str(p): "val" for p, _ in found if (root / "val") in Path(p).parents}
    problems = [(splits.get(str(p), "train"), str(p), text) for p, text in found]
    if not found:  # the split a run would make: its own refusals (too few masks, a bad labeled.txt) count
        try:
            _, _, val = folder_splits(root)
            held = {img for img, _ in val}
            train = [p for p in train if p[0] not in held]
        except KitError as e:
            path, _, text = " ".join(str(e).split()).partition(": ")
            problems.append(("train", path, text))
    return {"train": train, "val": val}, problems, names


def _val_mask_warnings(root: Path, val_pairs: list) -> list[tuple[str, str, str]]:
    """VOC val masks in SegmentationClassAug that differ from VOC's own in SegmentationClass (a tree
    made by mmsegmentation's converter holds SBD's, without the 255 borders). The kit scores on
    SegmentationClass (``VOC_MASK_FOLDERS``), but a tool reading SegmentationClassAug would
    not, and the file says it is VOC's."""
    out = []
    for img, mask in val_pairs:
        if mask is None or mask.parent.name != "SegmentationClass":
            continue
        aug = mask.parent.parent / "SegmentationClassAug" / mask.name
        if not aug.is_file():
            continue
        try:
            a, b = read_label_image(mask), read_label_image(aug)
        except KitError:
            continue  # the mask's own problem is listed by check_pairs
        if a.shape != b.shape or not np.array_equal(a, b):
            n = "its size" if a.shape != b.shape else f"{int((a != b).sum())} pixels"
            borders = " (no 255 borders: SBD's?)" if IGNORE_INDEX in a and IGNORE_INDEX not in b else ""
            out.append(("val", str(aug), f"differs from VOC's own {mask} in {n}{borders}; the kit scores "
                                         f"validation on SegmentationClass"))
    return out


def _list_problems(root: Path, dataset: str, lists: dict) -> tuple[dict, list]:
    """({'labeled': entries, 'unlabeled': entries}, problems) of split lists checked entry by entry
    against the tree: each list readable, every entry an image of the training set (a labeled one
    with its mask), none listed twice, none both labeled and unlabeled."""
    entries, problems = {}, []
    for role, path in lists.items():
        if path is None:
            continue
        try:
            found = list_entries(dataset, root, path)
        except KitError as e:
            problems.append((role, str(path), " ".join(str(e).split()).removeprefix(f"{path}: ")))
            continue
        counts = Counter(found)
        problems += [(role, str(path), f"{_shown_entry(e)} is listed {n} times") for e, n in counts.items() if n > 1]
        _, bad = _resolve_each(lambda es, r=role, p=path: list_pairs(dataset, root, es, p, r == "labeled"),
                               list(dict.fromkeys(found)), role, root)
        problems += [(role, str(path), f"{_shown_entry(e)}: {text.removeprefix(f'{path}: ')}") for _, e, text in bad]
        entries[role] = found
    val = set(_val_entries(root, dataset))
    for role, found in entries.items():
        problems += [(role, str(lists[role]), f"{_shown_entry(e)} is a validation image (a run would train "
                                              f"on what it is scored on)") for e in dict.fromkeys(found) if e in val]
    both = set(entries.get("labeled", ())) & set(entries.get("unlabeled", ()))
    problems += [("labeled", str(lists["labeled"]), f"{_shown_entry(e)} is also in the unlabeled list "
                                                   f"{lists['unlabeled']}") for e in sorted(both, key=str)]
    return entries, problems


def _val_entries(root: Path, dataset: str) -> list:
    """The validation set's entries, as list entries name them (VOC ids, Cityscapes pairs); none
    for a folder (a list names its training images only) or where the val list cannot be read
    (the tree check says why)."""
    try:
        if dataset == "voc":
            return list_entries("voc", root, voc_id_list(root, "val"), "val")
        if dataset == "cityscapes":
            return cityscapes_entries(root, "val")
    except KitError:
        pass
    return []


def _shown_entry(entry) -> str:
    return repr(entry if isinstance(entry, str) else entry[0])


def _listed_pairs(root: Path, dataset: str, labeled_list, unlabeled_list) -> tuple[dict, list, list[str]]:
    """({labeled, unlabeled, val: pairs}, problems, class names) of a run from split lists."""
    names = folder_class_names(root) if dataset == "folder" else \
        list(VOC_CLASS_NAMES if dataset == "voc" else CITYSCAPES_CLASS_NAMES)
    _, problems = _list_problems(root, dataset, {"labeled": labeled_list, "unlabeled": unlabeled_list})
    pairs = {"labeled": [], "unlabeled": [], "val": []}
    split = {"voc": voc_splits, "cityscapes": cityscapes_splits, "folder": folder_splits}[dataset]
    if problems:  # the validation set is still checked: the tree's, as a run without lists reads it
        try:
            pairs["val"] = split(root, labeled=None)[2]
        except KitError:
            pass  # the tree's own problem: data check without lists names it
    else:  # the split a run would make: its own refusals (a folder's held-out images) count
        try:
            lab, unl, val = split(root, labeled=None, labeled_list=labeled_list, unlabeled_list=unlabeled_list)
            # the run reads no mask of an unlabeled image
            pairs = {"labeled": lab, "unlabeled": [(img, None) for img, _ in unl], "val": val}
        except KitError as e:
            path, _, text = " ".join(str(e).split()).partition(": ")
            problems.append(("labeled", path, text))
    return pairs, problems, names


def check_data(root: str | Path, dataset: str | None = None, progress: bool = True,
               labeled_list: str | Path | None = None, unlabeled_list: str | Path | None = None) -> dict:
    """Check a data tree the way a run would read it; nothing is written.

    dataset: 'voc', 'cityscapes', 'folder' or None (``guess_dataset``). VOC and Cityscapes pairs come
    from the kit's readers (every training image needs its mask there; the labeled part is chosen at
    run time), folder pairs from ``folder_scan`` (images without masks are unlabeled).
    labeled_list (+ unlabeled_list): check what a run with ``--labeled-list`` (+ ``--unlabeled-list``)
    reads instead: every entry of the lists (in any format ``splits`` reads) against the tree, then
    the labeled images with their masks, the unlabeled images and the validation set.
    Returns {"root", "dataset", "class_names", "counts", "classes", "sizes", "problems", "warnings"},
    the last five pandas DataFrames: counts (set, images: labeled / unlabeled / val), classes (id,
    class, train_pixels (of the labeled images), val_pixels; last row ignore 255), sizes (split,
    images, distinct, min_w, max_w, min_h, max_h, most_common as 'WxH'), problems (split, file,
    problem; empty when the tree trains), warnings (split, file, warning: what trains but may mislead,
    e.g. VOC val masks in SegmentationClassAug that differ from VOC's own).
    """
    root = Path(root)
    dataset = dataset or guess_dataset(root)
    if dataset not in ("voc", "cityscapes", "folder"):
        raise KitError(f"dataset: expected voc, cityscapes or folder, got {dataset!r}")
    if not root.is_dir():
        raise KitError(f"{root}: data root not found")
    if unlabeled_list is not None and labeled_list is None:
        raise KitError("unlabeled_list: given without labeled_list (expected both, or labeled_list alone)")
    if labeled_list is not None:
        pairs, problems, names = _listed_pairs(root, dataset, labeled_list, unlabeled_list)
        checks = {"labeled": check_pairs(pairs["labeled"], len(names), "labeled", masks_required=True,
                                         progress=progress),
                  "unlabeled": check_pairs(pairs["unlabeled"], len(names), "unlabeled", progress=progress),
                  "val": check_pairs(pairs["val"], len(names), "val", masks_required=True, progress=progress)}
        lab, unl, va = checks["labeled"], checks["unlabeled"], checks["val"]
        counts = [lab.images, unl.images, va.images]
    else:
        pairs, problems, names = _folder_pairs(root) if dataset == "folder" else _reader_pairs(root, dataset)
        if not pairs["train"] and not problems:
            problems.append(("train", str(root), "no training images"))
        # a folder's val images without masks are among folder_scan's problems already
        checks = {s: check_pairs(pairs[s], len(names), s, masks_required=dataset != "folder",
                                 progress=progress) for s in ("train", "val")}
        lab, va = checks["train"], checks["val"]
        counts = [lab.labeled, lab.images - lab.labeled, va.images]
    for c in checks.values():
        problems += c.problems
    warnings = _val_mask_warnings(root, pairs["val"]) if dataset == "voc" else []

    counts = pd.DataFrame({"set": ["labeled", "unlabeled", "val"], "images": counts})
    ids = [*range(len(names)), IGNORE_INDEX]
    classes = pd.DataFrame({"id": ids, "class": [*names, "(ignore)"],
                            "train_pixels": lab.pixels[ids], "val_pixels": va.pixels[ids]})
    rows = []
    for c in checks.values():
        if c.sizes:
            w, h = zip(*c.sizes)
            (mw, mh), _ = c.sizes.most_common(1)[0]
            rows.append(dict(split=c.split, images=sum(c.sizes.values()), distinct=len(c.sizes), min_w=min(w),
                             max_w=max(w), min_h=min(h), max_h=max(h), most_common=f"{mw}x{mh}"))
    sizes = pd.DataFrame(rows, columns=["split", "images", "distinct", "min_w", "max_w", "min_h", "max_h",
                                        "most_common"])
    return {"root": root, "dataset": dataset, "class_names": names, "counts": counts, "classes": classes,
            "sizes": sizes, "problems": pd.DataFrame(problems, columns=["split", "file", "problem"]),
            "warnings": pd.DataFrame(warnings, columns=["split", "file", "warning"])}


def check_report(report: dict) -> str:
    """The tables of ``check_data``'s report as text, for the terminal."""
    parts = [f"{report['dataset']} data set in {report['root']}",
             report["counts"].to_string(index=False),
             report["classes"].to_string(index=False),
             report["sizes"].to_string(index=False) if len(report["sizes"]) else "no readable images"]
    problems = report["problems"]
    parts.append(f"{len(problems)} problem(s):\n" + problems.to_string(index=False) if len(problems)
                 else "no problems found")
    warnings = report.get("warnings")
    if warnings is not None and len(warnings):
        parts.append(f"{len(warnings)} warning(s) (the run is not stopped by these):\n"
                     + warnings.to_string(index=False))
    if report["dataset"] == "cityscapes" and problems["problem"].str.contains("labelTrainIds").any():
        parts.append(f"(the *_gtFine_labelTrainIds.png masks are made from the labelIds ones by "
                     f"`python -m cpcl_kit data cityscapes-trainids --root {report['root']}`)")
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------- any data set's lists


def list_entries(dataset: str, root: str | Path, path: str | Path, split: str = "train") -> list:
    """The entries of a split list as a run on ``dataset`` ('voc', 'cityscapes', 'folder') under
    ``root`` reads them: VOC ids (of ``split``'s images), Cityscapes (image, label) root-relative
    pairs, folder image names. KitError naming the list when it is missing, empty or names a path
    outside the root."""
    root = Path(root)
    if dataset == "voc":
        kind, base = voc_layout(root)
        return voc_reader(kind, base, split)(path)
    if dataset == "cityscapes":
        return [canonical_pair(root, e) for e in read_pair_list(path)]
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
    return [listed_pair(by_stem, e, listed_in, need_mask=labeled) for e in entries]
