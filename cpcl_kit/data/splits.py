"""Semi-supervised splits: split-list files in the CPS/CPCL format and seeded labeled/unlabeled
partitions. Used by ``data`` (digit scenes) and ``datasets`` (VOC, Cityscapes) alike.

A split list has one entry per line: VOC lines are ids (``2007_000032``), Cityscapes lines are
``<image path>\t<label path>`` relative to the data root (leading '/' allowed). Entries may never
leave the data root ('..' components are refused).
"""

from __future__ import annotations

import posixpath
import re
from fractions import Fraction
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


def _read_fields(path: str | Path) -> list[list[str]]:
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: split list not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: cannot read split list: {e}") from None
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if not rows:
        raise KitError(f"{path}: split list is empty (expected one entry per line)")
    return rows


def read_split_list(path: str | Path) -> list[str]:
    """Ids of a split list: the first whitespace-separated field of each non-blank line.

    KitError if the file is missing, empty, or an entry contains '..' / a drive (would escape a root).
    """
    ids = [row[0] for row in _read_fields(path)]
    for i in ids:
        check_relative(i, str(path))
    return ids


def read_pair_list(path: str | Path) -> list[tuple[str, str | None]]:
    """(image, label) root-relative paths of a CPS pair list (``<img>\\t<label>``); label None if absent."""
    where = str(path)
    return [
        (check_relative(r[0], where), check_relative(r[1], where) if len(r) > 1 else None)
        for r in _read_fields(path)
    ]


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
