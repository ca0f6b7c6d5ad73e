"""Semi-supervised splits: split-list files in the CPS/CPCL format and seeded labeled/unlabeled
partitions. Used by ``data`` (digit scenes) and ``datasets`` (VOC, Cityscapes) alike.

A split list has one entry per line, in any of the published formats: an id or image name
(``2007_000032``: CPS, U2PL's VOC lists, a folder's ``labeled.txt``), ``<image path>\t<label path>``
relative to the data root (leading '/' allowed: CPS's Cityscapes lists), two image paths separated
by a space (``JPEGImages/x.jpg SegmentationClass/x.png``: UniMatch), or an image path alone (U2PL's
Cityscapes lists). A line that is neither tab-separated nor two image paths is one entry, spaces
included, so a name with a space can be listed. Entries may never leave the data root ('..'
components are refused).
"""

from __future__ import annotations

import functools
import posixpath
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import parse_labeled  # noqa: F401  (defined with the settings it checks)
from ..errors import KitError
from ..files import write_text


def check_relative(entry: str, where: str) -> str:
    """Normalise a list entry to a root-relative posix path; refuse anything that could leave the root."""
    rel = entry.replace("\\", "/").lstrip("/")  # CPS lists write root-relative paths with a leading '/'
    if ".." in rel.split("/") or re.match(r"^[A-Za-z]:", rel) or not rel:
        raise KitError(f"{where}: entry {entry!r} would escape the data root (expected a path inside it)")
    return posixpath.normpath(rel)


@functools.lru_cache(maxsize=1)
def image_extensions() -> tuple[str, ...]:
    """The file extensions of every image format PIL can decode here (lower case, with the dot):
    ``PIL.Image.registered_extensions()`` less the formats it only identifies (stub plugins without a
    handler, MPEG), whose pixels it cannot read."""
    from PIL import Image, ImageFile

    exts = []
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None or fmt == "MPEG":  # save-only formats (pdf), and MPEG's header reader
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        exts.append(ext.lower())
    return tuple(sorted(set(exts)))


def _has_image_extension(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in image_extensions()


def read_list_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a list file, stripped (a byte-order mark, CRLF and surrounding blanks
    dropped); KitError naming the file when it is missing, unreadable or empty."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: split list not found")
    try:  # utf-8-sig: lists saved by Windows editors start with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: cannot read split list: {e}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise KitError(f"{path}: split list is empty (expected one entry per line)")
    return lines


def line_fields(line: str) -> list[str]:
    """The fields of one list line: tab-separated fields (CPS); else two image paths separated by
    blanks (UniMatch's ``JPEGImages/x.jpg SegmentationClass/x.png``, spaces inside either path
    allowed); else the whole line, spaces included (an id, a name or an image path)."""
    if "\t" in line:
        return [f.strip() for f in line.split("\t") if f.strip()]
    for gap in re.finditer(r"\s+", line):
        left, right = line[: gap.start()], line[gap.end():]
        if _has_image_extension(left) and _has_image_extension(right):
            return [left, right]
    return [line]


def list_id(field: str) -> str:
    """The id an entry names: an image path (``JPEGImages/2007_000032.jpg``) names the stem of its
    file (VOC and folder trees keep their images in one folder), anything else is the id itself."""
    field = field.replace("\\", "/")
    if _has_image_extension(field):
        return posixpath.splitext(posixpath.basename(field))[0]
    return field


def id_candidates(entry: str) -> list[str]:
    """The ids a list entry may mean, most literal first: the whole entry (a name with a space), then
    its first word (lists with more columns than the kit reads, e.g. ``2007_000032 1``)."""
    words = entry.split()
    return [entry] + ([words[0]] if len(words) > 1 else [])


def read_split_list(path: str | Path) -> list[str]:
    """Ids of a split list: the first field of each line (``line_fields``), an image path taken as its
    file's stem (``list_id``); the whole line when it is one field, spaces included.

    KitError if the file is missing, empty, or an entry contains '..' / a drive (would escape a root).
    """
    ids = []
    for line in read_list_lines(path):
        field = line_fields(line)[0]
        check_relative(field, str(path))  # the path as written: JPEGImages/../../x.jpg is refused too
        ids.append(list_id(field))
    return ids


def read_pair_list(path: str | Path) -> list[tuple[str, str | None]]:
    """(image, label) root-relative paths of a pair list (``<img>\\t<label>`` or ``<img> <label>``);
    label None when a line names its image only (U2PL: the reader derives the label's path)."""
    where = str(path)
    out = []
    for line in read_list_lines(path):
        f = line_fields(line)
        out.append((check_relative(f[0], where), check_relative(f[1], where) if len(f) > 1 else None))
    return out


def write_split_list(path: str | Path, ids: Sequence[str | tuple]) -> Path:
    """Write one id per line, or for (image, label) pairs CPS-style ``/<image>\t/<label>`` lines.

    Creates parent folders. Returns the path.
    """
    lines = ["\t".join("/" + x.lstrip("/") for x in i if x is not None) if isinstance(i, tuple) else str(i) for i in ids]
    return write_text(path, "\n".join(lines) + "\n")


def labeled_count(n: int, labeled: int | float) -> int:
    # Round half up: 1464/16 = 91.5 -> 92 as in the PseudoSeg split.
    return labeled if isinstance(labeled, int) else int(np.floor(n * labeled + 0.5))


def make_partition(ids: Sequence, labeled: str | int | float, seed: int = 0) -> tuple[list, list]:
    """Seeded random (labeled_ids, unlabeled_ids) partition; both keep the input order.

    labeled: a fraction ('1/16', 0.0625; count rounded half up) or an image count (92).
    KitError if it leaves no labeled or no unlabeled image.
    """
    labeled = parse_labeled(labeled)
    n = len(ids)
    k = labeled_count(n, labeled)
    if k < 1:
        raise KitError(f"labeled: {labeled!r} of {n} images leaves no labeled image (expected a larger fraction)")
    if k >= n:
        raise KitError(f"labeled: {labeled!r} of {n} images leaves no unlabeled image (expected fewer than {n})")
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng(seed).permutation(n)[:k]] = True
    return [x for x, c in zip(ids, chosen) if c], [x for x, c in zip(ids, chosen) if not c]


def fraction_denominator(labeled: int | float) -> int | None:
    """16 for 1/16 (the N of CPS's ``_1-N.txt`` files); None for counts or non-unit fractions."""
    if isinstance(labeled, int):
        return None
    d = round(1 / labeled)
    return d if abs(1 / labeled - d) < 1e-6 else None


def split_tag(labeled: int | float) -> str:
    d = fraction_denominator(labeled)
    return f"1-{d}" if d else (f"n{labeled}" if isinstance(labeled, int) else f"f{labeled:g}")


def choose_split(all_train, labeled, labeled_list, unlabeled_list, seed, out_dir, subset_dir, reader):
    """Shared VOC/Cityscapes policy deciding (labeled entries, unlabeled entries)."""
    if unlabeled_list is not None and labeled_list is None:
        raise KitError("unlabeled_list: given without labeled_list (expected both, or labeled_list alone)")
    if labeled_list is not None:
        lab = reader(labeled_list)
        if unlabeled_list is not None:
            return lab, reader(unlabeled_list)
        return lab, rest_of(all_train(), lab)
    if labeled is None:
        return all_train(), []
    labeled = parse_labeled(labeled)
    d = fraction_denominator(labeled)
    if subset_dir is not None and d is not None:
        lab_file = subset_dir / f"train_aug_labeled_1-{d}.txt"
        unl_file = subset_dir / f"train_aug_unlabeled_1-{d}.txt"
        if lab_file.is_file():
            lab = reader(lab_file)
            return lab, reader(unl_file) if unl_file.is_file() else rest_of(all_train(), lab)
    lab, unl = make_partition(all_train(), labeled, seed)
    if out_dir is not None:
        tag = split_tag(labeled)
        write_split_list(Path(out_dir) / f"train_aug_labeled_{tag}.txt", lab)
        write_split_list(Path(out_dir) / f"train_aug_unlabeled_{tag}.txt", unl)
    return lab, unl


def rest_of(all_items: list, taken: list) -> list:
    s = set(taken)
    return [x for x in all_items if x not in s]
