"""Reading a data set on disk: images as viewers show them (any format PIL reads, EXIF orientation
applied, 16-bit greyscale scaled), masks checked against the classes, and ``SegmentationFiles``, the
data set of (image path, mask path or None) pairs every data set on disk gives."""

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

from ..constants import IGNORE_INDEX
from ..errors import KitError
from .splits import image_extensions


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


def under_root(root: Path, rel: str) -> Path:
    return root.joinpath(*rel.split("/"))


def missing_error(root: Path, what: str, missing: list[Path], total: int) -> KitError:
    shown = ", ".join(str(p) for p in missing[:3])
    return KitError(f"{root}: {len(missing)} of {total} {what} not found, e.g. {shown}")


# Every image format PIL decodes here (.jpg, .png, .webp, .bmp, .tif, ...): a folder of photos is
# read whole, not only its JPEGs and PNGs. Masks stay PNGs (lossless class ids).
_COMMON = (".jpg", ".jpeg", ".png")  # first, where the suffixes are listed to a user


IMAGE_SUFFIXES = _COMMON + tuple(e for e in image_extensions() if e not in _COMMON)


IMAGE_FILES = "image files PIL reads: .jpg, .png, .webp, .bmp, .tif, ..."  # IMAGE_SUFFIXES in words


LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")
