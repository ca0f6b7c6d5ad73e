"""TensorBoard logging of a training run (``Config.tensorboard``), into the run folder itself.

``tensorboard --logdir runs/`` then shows every run of a folder of runs side by side. What is
logged is what the run records anyway, at the same points: each history row (losses, lr, λ, the
pseudo-label agreement, weights and per-class statistics), each validation mIoU, and every
``tb_image_every`` iterations one image of the teachers' pseudo labels on fixed unlabeled scenes.

Logging never changes training: the pseudo labels are built by the training step's own function
under the run's recipe (``method.scenes.pseudo_labels_on_scenes``), from its own seeded generator, on copies
of the nets where the teachers would update BatchNorm's statistics, with the nets' modes restored and
torch's random state forked around it, so nothing draws from the generators training uses. The
image takes at least ``MIN_SCENES`` scenes (a small folder's repeated), never one image through
train-mode BatchNorm. The ``tensorboard`` package is imported only
when a run opens a board; without it ``open_board`` gives a board that writes nothing.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

# History columns and the TensorBoard section they go to; ind_<c> and inter_frac_<c> per class.
_SECTIONS = {
    "loss": "loss", "sup1": "loss", "sup2": "loss", "unsup1": "loss", "unsup2": "loss",
    "lr": "schedule", "lambda": "schedule",
    "agreement": "pseudo_labels", "w_inter": "pseudo_labels", "w_union": "pseudo_labels",
    "w_agree": "pseudo_labels", "w_disagree": "pseudo_labels", "acc_union": "pseudo_labels",
    "acc_y1": "pseudo_labels", "acc_y2": "pseudo_labels", "acc_inter": "pseudo_labels",
}
_SKIPPED = ("iteration", "seconds")
SCENES = 4  # unlabeled scenes in the pseudo-label image
# The fewest scenes the image is drawn from: teachers with BatchNorm in train mode (the official
# recipe) normalise over the batch, and ASPP's image pooling leaves one value per channel and image,
# which one image cannot normalise. A tree with 2-3 unlabeled images (CutMix takes two per scene)
# gets its scenes repeated instead (``scenes.pick_scenes`` goes round the set again).
MIN_SCENES = 2


def available() -> bool:
    """Whether the ``tensorboard`` package is installed (without importing it)."""
    return importlib.util.find_spec("tensorboard") is not None


def scalar_tag(key: str, class_names) -> str | None:
    """The TensorBoard tag of a history column: ``loss/sup1``, ``schedule/lr``,
    ``indicator/<class>``, ``coverage/<class>`` (of the pixels whose union label is the class, the
    fraction with an intersection label); None for columns not logged."""
    if key in _SKIPPED:
        return None
    for prefix, section in (("ind_", "indicator"), ("inter_frac_", "coverage")):
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            c = int(key[len(prefix):])
            name = class_names[c] if c < len(class_names) else str(c)
            return f"{section}/{c:02d}_{name}"
    return f"{_SECTIONS.get(key, 'other')}/{key}"


class NoBoard:
    """What a run without TensorBoard logs with: nothing."""

    enabled = False

    def row(self, row: dict) -> None:
        pass

    def validation(self, iteration: int, metrics: dict) -> None:
        pass

    def images_due(self, done: int) -> bool:
        return False

    def pseudo_labels(self, iteration: int, nets, data) -> None:
        pass

    def close(self) -> None:
        pass


class Board(NoBoard):
    """A ``SummaryWriter`` on the run folder. ``start``: the iteration the run (re)starts from (its
    checkpoint's); TensorBoard drops what an earlier attempt logged after it (``purge_step``,
    events at steps >= start + 1), so a resumed run continues the same curves, each step once."""

    enabled = True

    def __init__(self, cfg, run_dir, start: int, class_names):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.class_names = cfg, list(class_names)
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start + 1)

    def row(self, row: dict) -> None:
        """One history row (``train._Log.row``) at its iteration."""
        step = int(row["iteration"])
        for key, value in row.items():
            tag = scalar_tag(key, self.class_names)
            if tag is not None and isinstance(value, (int, float)) and not math.isnan(value):
                self.writer.add_scalar(tag, value, step)

    def validation(self, iteration: int, metrics: dict) -> None:
        for key in ("miou", "digit_miou", "pixel_acc"):
            if key in metrics:
                self.writer.add_scalar(f"val/{key}", metrics[key], iteration)
        self.writer.flush()

    def images_due(self, done: int) -> bool:
        every = self.cfg.tb_image_every
        return every > 0 and (done % every == 0 or done == self.cfg.iterations)

    def pseudo_labels(self, iteration: int, nets, data) -> None:
        """Image, true mask, y1, y2, intersection, union and their weights (``method.scenes.pseudo_label_panels``) of
        the same unlabeled scenes at every call; two-net methods only."""
        if len(nets) != 2:
            return
        from ..method.scenes import pseudo_label_panels, pseudo_labels_on_scenes

        if len(data.unlabeled) == 0:
            return
        per_scene = 2 if self.cfg.cutmix_boxes else 1  # CutMix draws u1 too
        n = max(MIN_SCENES, min(SCENES, len(data.unlabeled) // per_scene))
        with _draws_kept(nets):
            images, masks, labels = pseudo_labels_on_scenes(nets, data, self.cfg, n=n, seed=0)
        grid = pseudo_label_panels(images, masks, labels, self.cfg.num_classes)
        self.writer.add_image("pseudo_labels", grid, iteration, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _draws_kept(nets):
    """torch's random state forked for the figure: the CPU generator and that of the nets' GPU, so
    that nothing the figure draws (a train-mode layer, a transform) moves what training draws next."""
    device = next(nets[0].parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def open_board(cfg, run_dir: Path | None, start: int, class_names, main: bool = True) -> NoBoard:
    """A ``Board`` on ``run_dir`` when ``cfg.tensorboard`` is on, the package is installed, the run
    has a folder and this is rank 0; else a ``NoBoard``."""
    if not (cfg.tensorboard and run_dir is not None and main and available()):
        return NoBoard()
    with torch.random.fork_rng(devices=[]):  # importing tensorboard draws nothing; made sure here
        return Board(cfg, run_dir, start, class_names)
