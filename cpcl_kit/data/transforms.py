"""Joint image/mask transforms (torchvision.transforms.v2 on tv_tensors.Image / tv_tensors.Mask).

Inputs: ``Image`` uint8 [3,H,W] and ``Mask`` int64 [H,W]. Outputs: plain float32 [3,h,w]
(ImageNet-normalised) and int64 [h,w] tensors, 255 = ignore. All randomness comes from torch's global
RNG, so a loader can make any sample's augmentation reproducible by seeding it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..config import CROP_PADS
from ..errors import KitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255
PAPER_SCALES = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from a discrete set: new size = (int(h*s), int(w*s)).

    Images bilinear, masks nearest (v2 picks nearest for Mask by itself).
    """

    def __init__(self, scales: Sequence[float]):
        super().__init__()
        if not scales or any(s <= 0 for s in scales):
            raise KitError(f"scales: expected a non-empty list of positive factors, got {scales!r}")
        self.scales = tuple(float(s) for s in scales)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = self.scales[int(torch.randint(len(self.scales), ()))]
        return {"size": [max(1, int(h * s)), max(1, int(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # antialias=False matches the official OpenCV INTER_LINEAR resize.
        return self._call_kernel(
            F.resize, inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=False
        )


class CentredPadCrop(v2.Transform):
    """Crop to ``size`` x ``size`` as the official loader does: random where larger, centred pad where smaller.

    Per side of length L: L > size takes a window at an offset drawn uniformly from [0, L - size]
    (torch's RNG); L <= size keeps the whole side and pads it with (size - L) // 2 before and the
    rest after (furnace ``pad_image_to_shape``), so a small image sits in the middle. The image is
    padded with 0 (it is already normalised: the mean colour, as the official pads the normalised
    array with 0), the mask with 255. Sides are independent: a 600x300 image at 512 gets a random
    vertical window and centred horizontal padding. Output [.., size, size].
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        c = self.size
        # drawn in RandomCrop's order (rows, then columns) with its bounds
        top = int(torch.randint(0, h - c + 1, ())) if h > c else 0
        left = int(torch.randint(0, w - c + 1, ())) if w > c else 0
        ch, cw = min(h, c), min(w, c)
        pad_top, pad_left = (c - ch) // 2, (c - cw) // 2
        return {"top": top, "left": left, "height": ch, "width": cw,
                "padding": [pad_left, pad_top, c - cw - pad_left, c - ch - pad_top]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self._call_kernel(F.crop, inpt, top=params["top"], left=params["left"],
                                height=params["height"], width=params["width"])
        if any(params["padding"]):
            fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0.0
            out = self._call_kernel(F.pad, out, padding=params["padding"], fill=fill)
        return out


class ContentFlag(v2.Transform):
    """Append a fourth channel of 255 to a uint8 Image. A crop pads it with 0, so after the crop it
    tells the image's own pixels (255) from the padding (0): what ``finish_images`` needs to give the
    padding the value a normalised crop has there."""

    _transformed_types = (tv_tensors.Image,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        flag = torch.full_like(inpt[:1], 255)
        return tv_tensors.wrap(torch.cat([inpt.as_subclass(torch.Tensor), flag]), like=inpt)


def finish_images(x: torch.Tensor) -> torch.Tensor:
    """Training crops as a deferred ``train_transform`` ships them, uint8 [..., 4, H, W] (RGB and
    ``ContentFlag``), as the nets take them: float32 [..., 3, H, W], ImageNet-normalised, 0 on the
    padding. The same elementwise operations as the undeferred transform, in the same order, so the
    same values bit for bit; done once per batch on the batch's device. Float images pass as they are."""
    if x.dtype != torch.uint8:
        return x
    if x.dim() < 3 or x.shape[-3] != 4:
        raise KitError(f"images: expected uint8 crops [..., 4, H, W] (RGB and a content flag), got {tuple(x.shape)}")
    rgb = F.normalize(F.to_dtype(x[..., :3, :, :], torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
    return torch.where(x[..., 3:, :, :] > 0, rgb, 0.0)


class JointTransform:
    """Run a v2 pipeline on (Image, Mask) and return plain tensors (float image, int64 mask)."""

    def __init__(self, pipeline: v2.Transform):
        self.pipeline = pipeline

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(image, tv_tensors.Image):
            image = tv_tensors.Image(image)
        if not isinstance(mask, tv_tensors.Mask):
            mask = tv_tensors.Mask(mask)
        image, mask = self.pipeline(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return f"JointTransform({self.pipeline!r})"


def _to_float_normalised() -> list[v2.Transform]:
    return [
        # Only the image becomes float; the mask keeps its integer labels.
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ]


def train_transform(
    crop: int,
    scales: Sequence[float] | None = PAPER_SCALES,
    flip: bool = True,
    colour: bool = False,
    crop_pad: str = "random",
    deferred: bool = False,
) -> JointTransform:
    """Training augmentation: [colour] -> [hflip p=0.5] -> [discrete scale] -> float+normalise -> crop.

    crop: output side in px; smaller inputs are padded (image 0 = mean colour after normalisation,
    mask 255). crop_pad: where a smaller input sits: "random" (torchvision RandomCrop with
    pad_if_needed: anywhere in the padding, the kit's original behaviour) or "centre" (the
    official loader, ``CentredPadCrop``). scales=None: no rescaling. colour=True: random channel
    permutation and random inversion (p=0.5) of the uint8 image, which keep labels valid for
    colour-agnostic digit scenes. Returns (float32 [3,crop,crop], int64 [crop,crop]).

    ``deferred=True`` (what a training loader uses): the same draws and crop, but the image stays
    uint8 with a ``ContentFlag`` channel, uint8 [4,crop,crop], a quarter of the float crop's bytes
    through a worker's shared memory; ``finish_images`` converts and normalises a batch of them on
    the device to exactly the undeferred values.
    """
    if int(crop) < 1:
        raise KitError(f"crop: expected a positive size in px, got {crop}")
    if crop_pad not in CROP_PADS:
        raise KitError(f"crop_pad: unknown {crop_pad!r}, expected one of {', '.join(CROP_PADS)}")
    ops: list[v2.Transform] = []
    if colour:
        ops += [v2.RandomChannelPermutation(), v2.RandomInvert(p=0.5)]
    if flip:
        ops.append(v2.RandomHorizontalFlip(p=0.5))
    if scales is not None:
        ops.append(RandomScale(scales))
    # The crop comes last and pads the image with 0: the mean colour once normalised, or, deferred,
    # a content flag of 0 that ``finish_images`` turns into that 0.
    ops += [ContentFlag()] if deferred else _to_float_normalised()
    if crop_pad == "centre":
        ops.append(CentredPadCrop(int(crop)))
    else:
        ops.append(
            v2.RandomCrop(
                int(crop), pad_if_needed=True, fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}
            )
        )
    return JointTransform(v2.Compose(ops))


def val_transform() -> JointTransform:
    """No augmentation: uint8 -> float32 in [0,1] -> ImageNet-normalised; mask unchanged (int64)."""
    return JointTransform(v2.Compose(_to_float_normalised()))


def display_image(x) -> np.ndarray:
    """What ``imshow`` shows of an image: a [3,H,W] tensor as the kit's transforms give it
    (ImageNet-normalised) -> [H,W,3] floats in [0, 1]; an [H,W,3] array as it is."""
    if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[0] == 3:
        return denormalize(x.detach().float().cpu()).permute(1, 2, 0).numpy()
    return np.asarray(x)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of [..., 3, H, W]; returns values clamped to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
