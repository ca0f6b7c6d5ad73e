"""What this machine can hold: its memory, and the size bounds of the settings that follow from it
(``config.LIMITS`` and ``config.validate`` use them, so that a value that cannot fit is refused in
one line before anything loads)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import KitError


def machine_memory() -> int | None:
    """Bytes of memory this machine lets the kit's process hold: the physical memory, or the
    control group's limit when lower (a container); None where neither can be read."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        total = None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total if total and total > 0 else None


# What the bounds that follow from the machine assume where its memory cannot be read.
_ASSUMED_MEMORY = 1 << 40


# The memory the size bounds below are computed from, read once per process.
MEMORY = machine_memory() or _ASSUMED_MEMORY


GIB = f"{MEMORY / 2 ** 30:.1f} GiB"


# The bytes a bound is made of, each a floor of what the kit allocates, so that a value over its
# bound cannot fit whatever else the run needs: a pixel of an image the nets see, as float32 RGB
# and a float32 map beside it (scores or a mask); a 3x3 convolution's weight, float32, per
# channel pair; a loader process (a forked Python with torch and a batch in flight); a digit
# scene, RGB and mask bytes, and one bool per pixel and CutMix box.
PIXEL_BYTES = 4 * (3 + 1)


CONV3_BYTES = 4 * 9


WORKER_BYTES = 256 << 20


SCENE_PIXEL_BYTES = 4


BOX_PIXEL_BYTES = 1


# The most loader processes: as many as MEMORY holds, and never fewer than 8, so that a preset's
# 4 (a paper preset's) stays valid on a small machine.
MAX_WORKERS = max(8, MEMORY // WORKER_BYTES)


# The largest crop side (px) whose float32 image and map fit in MEMORY: one image alone.
MAX_SIDE = math.isqrt(MEMORY // PIXEL_BYTES)


# Scalars the optimizers take as float32 (lr, weight decay): Adam divides lr by 1 - beta1 = 0.1
# at its first step, so a larger value overflows in the step ("cannot be converted to float").
_FLOAT32_MAX = 3.4028234663852886e38


MAX_OPTIMIZER_SCALAR = _FLOAT32_MAX / 10


# A seed: the step generators are seeded with seed x 1,000,003 + iteration, which must fit in 64 bits.
MAX_SEED = 2 ** 32 - 1


# Most distinct images of the digit backbone's pretraining (nets/pretrain.py): more cost data time
# and memory (12 KB each at 64 px) for little gain.
PRETRAIN_MAX_IMAGES = 16000


def pretrain_images(steps: int, batch: int) -> int:
    """Distinct images the pretraining of ``steps`` x ``batch`` renders: each seen at least twice,
    at most ``PRETRAIN_MAX_IMAGES``, at least one batch."""
    return max(batch, min(PRETRAIN_MAX_IMAGES, steps * batch // 2))


def check_pretrain_memory(size: int, batch: int, images: int) -> None:
    """The pretraining renders its images at once (uint8 RGB) and holds a float32 batch per step:
    both must fit in this machine's memory. KitError naming pretrain_size or pretrain_batch."""
    pixels = size * size
    if images * pixels * 3 > MEMORY:
        raise KitError(f"pretrain_size: expected at most {math.isqrt(MEMORY // (3 * images))} px for {images} "
                       f"pretraining images on this machine ({GIB}), got {size}")
    if batch * pixels * PIXEL_BYTES > MEMORY:
        raise KitError(f"pretrain_batch: expected at most {MEMORY // (pixels * PIXEL_BYTES)} images of {size} px "
                       f"per step on this machine ({GIB}), got {batch}")
