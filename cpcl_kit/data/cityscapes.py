"""Cityscapes (19 trained classes, 255 ignore): its two layouts (the standard one, CPS's) and its splits."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import KitError
from .images import Pair, missing_error, under_root
from .splits import check_relative, choose_split, read_pair_list


CITYSCAPES_CLASS_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
]  # fmt: skip


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


def canonical_pair(root: Path, entry: tuple[str, str | None]) -> tuple[str, str | None]:
    """The entry as it exists on disk: a missing label path is the one its image implies
    (``_implied_label``); CPS names are mapped to the standard tree if only that exists, and
    standard names to CPS's tree if only that exists."""
    img_rel, lbl_rel = entry
    if lbl_rel is None:
        lbl_rel = _implied_label(img_rel)
    if not under_root(root, img_rel).is_file():
        if img_rel.startswith("images/"):
            mapped = _cps_to_standard(img_rel, lbl_rel)
        elif img_rel.startswith("leftImg8bit/"):
            mapped = _standard_to_cps(img_rel, lbl_rel)
        else:
            mapped = None
        if mapped is not None and under_root(root, mapped[0]).is_file():
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
        img_rel, lbl_rel = canonical_pair(root, (img_rel, lbl_rel))
        img, lbl = under_root(root, img_rel), None if lbl_rel is None else under_root(root, lbl_rel)
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
        raise missing_error(root, "images listed in the split", missing_img, len(entries))
    if missing_mask:
        raise missing_error(root, "label masks listed in the split", missing_mask, len(entries))
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
        return [canonical_pair(root, e) for e in read_pair_list(path)]

    lab, unl = choose_split(
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
        return [canonical_pair(root, e) for e in read_pair_list(lst)]
    if kind == "cps":
        raise KitError(f"{lst}: split list not found (the CPS Cityscapes layout needs config_new/{split}.txt)")
    return _scan_standard(root, split)
