"""A folder of one's own data set: images/, masks/<same stem>.png, classes.txt, an optional val/ folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import ALL_LABELED, FOLDER_CLASSES
from ..errors import KitError
from ..files import read_class_names
from .images import IMAGE_FILES, IMAGE_SUFFIXES, LOSSY_SUFFIXES, Pair
from .splits import (choose_split, id_candidates, labeled_count, make_partition, parse_labeled,
                     read_split_list, split_tag, write_split_list)

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
            why = " (lossy: class ids blur at the edges)" if suffix in LOSSY_SUFFIXES else ""
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
        lab_ids, unl_ids = choose_split(lambda: list(by_stem), None, labeled_list, unlabeled_list, seed,
                                         out_dir, None, folder_list_reader(by_stem))
        lab = [listed_pair(by_stem, i, labeled_list, need_mask=True) for i in lab_ids]
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
        unl = [listed_pair(by_stem, i, unlabeled_list or labeled_list, need_mask=False) for i in unl_ids]
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


def listed_pair(by_stem: dict, name: str, listed_in, need_mask: bool) -> Pair:
    if name not in by_stem:
        raise KitError(f"{listed_in}: {name!r} is not a training image of the folder (expected a name "
                       f"from images/ without extension, not one held out for validation)")
    pair = by_stem[name]
    if need_mask and pair[1] is None:
        raise KitError(f"{listed_in}: {name!r} is listed as labeled but masks/{name}.png does not exist")
    return pair
