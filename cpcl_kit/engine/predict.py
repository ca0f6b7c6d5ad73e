"""Prediction on your own images: class-id maps from a trained run, and PNG files that show them.

``predict`` runs a run's checkpoint on image files or arrays exactly as the run's validation set is
scored (``evaluate.predict_logits``): the validation transform's normalisation, the run's evaluation
crop (sliding windows over larger images) and stride, net 1 unless asked otherwise.
``write_predictions`` writes each map as a palette PNG of class ids beside an overlay on the image.
``python -m cpcl_kit predict`` is the two in one command; ``cpcl_kit.predict`` is ``predict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import MIN_CROP_STRIDES, Config, check_device
from ..constants import PREDICT_BRANCHES as BRANCHES
from ..data.images import IMAGE_FILES, IMAGE_SUFFIXES, read_image
from ..data.palette import palette_for
from ..data.transforms import val_transform
from ..errors import KitError
from ..limits import MAX_SIDE, MEMORY
from ..files import write_atomic
from . import checkpoint, evaluate, runs
from .device import pick_device

__all__ = ["BRANCHES", "Predictor", "checkpoint_path", "image_files", "output_names", "predict",
           "write_image", "write_predictions"]

OVERLAY_ALPHA = 0.5  # overlay = (1 - alpha) · image + alpha · class colour


# ------------------------------------------------------------------------------------------------
# inputs


def checkpoint_path(path) -> Path:
    """The checkpoint file of ``path``: the file itself, or a run folder's ``checkpoint.pt``."""
    path = Path(path)
    if path.is_dir():
        if not (path / runs.CHECKPOINT).is_file():
            raise KitError(f"checkpoint: {path} is a folder without {runs.CHECKPOINT} (not a run folder, "
                           f"or its checkpoint was deleted)")
        return path / runs.CHECKPOINT
    if not path.is_file():
        raise KitError(f"checkpoint: file not found: {path}")
    return path


def image_files(inputs: Sequence) -> list[Path]:
    """Image files from files and folders: a folder gives its own image files (any format PIL reads; not its
    subfolders'), sorted by name; files stay in the order given. KitError naming a missing path,
    a folder without images, or no input at all."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise KitError(f"images: folder {path} holds no {IMAGE_FILES}")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise KitError(f"images: {path} not found")
    if not found:
        raise KitError("images: none given")
    return found


def _as_list(images) -> list:
    # One path or one [H, W, 3] array is one image (a str must not be iterated letter by letter).
    if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        return [images]
    return list(images)


def output_names(images, names: Sequence[str] | None = None) -> list[str]:
    """The file-name stem of each image's outputs: ``names`` if given, else the stem of a path
    (``photos/cat.jpg`` -> ``cat``) and ``image{i}`` for an array. KitError when two images would
    write the same file (``<stem>.png`` or ``<stem>_overlay.png``)."""
    images = _as_list(images)
    if names is None:
        names = [Path(im).stem if isinstance(im, (str, Path)) else f"image{i}" for i, im in enumerate(images)]
    names = [str(n) for n in names]
    if len(names) != len(images):
        raise KitError(f"names: expected one per image ({len(images)}), got {len(names)}")
    owner: dict[str, int] = {}
    for i, name in enumerate(names):
        for file in (f"{name}.png", f"{name}_overlay.png"):
            if file in owner:
                j = owner[file]
                raise KitError(f"images: {_describe(images[j], j)} and {_describe(images[i], i)} would both "
                               f"write {file}; rename one")
            owner[file] = i
    return names


def _describe(image, i: int) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"image {i} (an array)"


def _rgb(image, i: int) -> np.ndarray:
    """uint8 [H, W, 3] of a path (read with the data sets' reader) or an array (checked)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise KitError(f"images[{i}]: expected an image file path or a uint8 RGB array [H, W, 3], got {got}")
    return image


# ------------------------------------------------------------------------------------------------
# prediction


@dataclass
class Predictor:
    """A loaded run ready to predict: its config, the branch's net(s) in eval mode on ``device``,
    and the sliding-window crop (None: the whole image at once) and stride ratio it uses."""

    config: Config
    models: list
    device: torch.device
    crop: int | None
    stride_ratio: float

    @classmethod
    def load(cls, checkpoint_or_run, *, branch: str = "net1", device="auto", crop: int | None = None
             ) -> "Predictor":
        """Load a checkpoint (or a run folder's) for ``branch``: ``net1``, ``net2`` or ``ensemble`` (the
        mean softmax of both, as ``evaluate_run`` scores it). ``crop=None``: the run's ``eval_crop``."""
        if branch not in BRANCHES:
            raise KitError(f"branch: expected one of {', '.join(BRANCHES)}, got {branch!r}")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
            raise KitError(f"crop: expected None or an int >= 1, got {crop!r}")
        if crop is not None and crop > MAX_SIDE:
            raise KitError(f"crop: expected at most {MAX_SIDE} px (one window of that side must fit in this "
                           f"machine's {MEMORY / 2 ** 30:.1f} GiB), got {crop}")
        path = checkpoint_path(checkpoint_or_run)
        # Only the devices the kit runs on: torch also builds "meta" (no data) and others that end in
        # a traceback at the first forward.
        check_device(device)
        try:
            dev = pick_device(device)
        except RuntimeError:  # torch's own message for an unknown device string is a paragraph
            raise KitError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}") from None
        cfg, nets = checkpoint.load_nets(path, dev)
        if branch != "net1" and len(nets) == 1:
            raise KitError(f"branch: {branch} needs a two-net run (cps or cpcl); {path} holds method "
                           f"{cfg.method!r}, one net")
        smallest = MIN_CROP_STRIDES * cfg.output_stride
        if crop is not None and crop < smallest:
            # A smaller window gives layer4 one position: every pixel gets the same class.
            raise KitError(f"crop: expected at least {smallest} px for the run in {path} ({MIN_CROP_STRIDES} x its "
                           f"output stride {cfg.output_stride}, so that layer4 sees 2x2 positions), got {crop}")
        models = {"net1": nets[:1], "net2": nets[1:], "ensemble": nets}[branch]
        return cls(cfg, models, dev, cfg.eval_crop if crop is None else crop, cfg.eval_stride)

    @property
    def palette(self) -> np.ndarray:
        """uint8 [256, 3]: the colours of this run's classes (VOC's own map for a VOC run)."""
        return palette_for(self.config.dataset, self.config.num_classes)

    def __call__(self, images, progress: bool = True) -> list[np.ndarray]:
        """One uint8 [H, W] class-id map per image (paths or uint8 [H, W, 3] arrays), each at its
        image's size. Files are read one at a time, so a folder of photos needs no more memory
        than one of them and the maps."""
        images = _as_list(images)
        if not images:
            raise KitError("images: none given")
        for image in images:  # every path checked before the first (slow) forward
            if isinstance(image, (str, Path)) and not Path(image).is_file():
                raise KitError(f"{image}: image file not found")
        normalise = val_transform()  # the validation set's own normalisation, not a copy of it
        models = self.models if len(self.models) > 1 else self.models[0]
        out = []
        for i, image in enumerate(tqdm(images, desc="predict", unit="img", disable=not progress)):
            # uint8 travels to the device (a quarter of the float bytes) and is normalised there
            rgb = torch.from_numpy(np.ascontiguousarray(_rgb(image, i))).permute(2, 0, 1).to(self.device)
            # the transform maps (image, mask) pairs; this image has no mask, so a blank one rides along
            x, _ = normalise(rgb, torch.zeros(rgb.shape[-2:], dtype=torch.uint8, device=self.device))
            scores = evaluate.predict_logits(models, x[None], crop=self.crop,
                                             stride_ratio=self.stride_ratio, num_classes=self.config.num_classes)
            # every data set has fewer than 256 classes: uint8 ids are the label PNGs' own values
            out.append(scores[0].argmax(dim=0).to(torch.uint8).cpu().numpy())
        return out


def predict(checkpoint, images, *, branch: str = "net1", device="auto", crop: int | None = None,
            progress: bool = True) -> list[np.ndarray]:
    """Class-id maps of a trained run on your own images: one uint8 [H, W] array per image.

    checkpoint: a run's ``checkpoint.pt`` or its run folder. images: image file paths (anything PIL
    reads, converted to RGB) and/or uint8 RGB arrays [H, W, 3]; one path or array alone is one
    image. branch: ``net1`` (the branch the paper and the kit report), ``net2`` or ``ensemble``
    (mean softmax of both; a supervised run has net 1 only). device: ``auto`` (a GPU when present),
    ``cpu``, ``cuda``. crop: the sliding window's side in px; None takes the run's ``eval_crop`` (the
    whole image at once where that is None), with its ``eval_stride``. Images are normalised as the
    validation set is, and scored as ``evaluate.predict_logits`` scores it.
    """
    return Predictor.load(checkpoint, branch=branch, device=device, crop=crop)(images, progress=progress)


# ------------------------------------------------------------------------------------------------
# writing


def _png(image: Image.Image) -> Callable:
    return lambda f: image.save(f, format="PNG")


def write_image(path, image: np.ndarray) -> Path:
    """Write a uint8 RGB array [H, W, 3] as a PNG file, atomically; returns the path."""
    return write_atomic(path, _png(Image.fromarray(_rgb(image, 0))))


def write_predictions(labels: Sequence[np.ndarray], images, out_dir, *, palette: np.ndarray,
                      names: Sequence[str] | None = None, alpha: float = OVERLAY_ALPHA) -> list[tuple[Path, Path]]:
    """Per image, ``out_dir/<name>.png`` (the class ids as a palette PNG: its pixel values are the
    ids, its colours ``palette``) and ``out_dir/<name>_overlay.png`` (the image blended with the
    class colours, ``alpha`` of colour); atomic writes. Returns the (ids, overlay) paths in order.

    labels: uint8/int [H, W] maps (``predict``'s). images: the same paths or arrays they came from.
    palette: uint8 [256, 3] RGB (``Predictor.palette``, ``data.palette.palette_for``). names: file
    stems, default ``output_names(images)``. KitError when two images would write the same file, or
    a file would overwrite one of the input images.
    """
    images = _as_list(images)
    labels = list(labels)
    if len(labels) != len(images):
        raise KitError(f"labels: expected one per image ({len(images)}), got {len(labels)}")
    names = output_names(images, names)
    palette = np.asarray(palette)
    if palette.shape != (256, 3) or palette.dtype != np.uint8:
        raise KitError(f"palette: expected uint8 [256, 3] RGB, got {palette.dtype} {palette.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise KitError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    out_dir = Path(out_dir)
    inputs = {Path(im).resolve() for im in images if isinstance(im, (str, Path))}
    clash = [out_dir / f"{n}{s}.png" for n in names for s in ("", "_overlay")
             if (out_dir / f"{n}{s}.png").resolve() in inputs]
    if clash:
        raise KitError(f"--out: writing {clash[0]} would overwrite an input image; choose another folder")

    written = []
    for i, (label, image, name) in enumerate(zip(labels, images, names)):
        rgb = _rgb(image, i)
        label = np.asarray(label)
        if label.shape != rgb.shape[:2] or label.dtype.kind not in "iu" or label.size and \
                (label.min() < 0 or label.max() > 255):
            raise KitError(f"labels[{i}]: expected class ids in [0, 255] of the image's size "
                           f"{rgb.shape[:2]}, got {label.dtype} {label.shape}")
        ids = label.astype(np.uint8)
        mask = Image.fromarray(ids)  # mode L; putpalette makes it P, its values stay the class ids
        mask.putpalette(palette.reshape(-1).tolist())
        blend = (1.0 - alpha) * rgb + alpha * palette[ids]
        overlay = Image.fromarray(np.round(blend).astype(np.uint8))
        written.append((write_atomic(out_dir / f"{name}.png", _png(mask)),
                        write_atomic(out_dir / f"{name}_overlay.png", _png(overlay))))
    return written
