"""Pseudo labels and predictions on a few scenes, and their panels as arrays.

What the notebooks (``teach.analysis``, ``teach.plots``) and TensorBoard (``engine.tblog``) show of a
run's nets: a few seeded scenes, the two nets' pseudo labels on them built by the training step's
own function (``method.steps.pseudo_labels``) under the run's recipe, and the overlay panels of
those labels as arrays. Everything is returned on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Subset

from ..constants import IGNORE_INDEX
from ..data.palette import IGNORE_GREY, colourise
from ..data.transforms import display_image, finish_images
from ..errors import KitError
from ..nets.deeplab import without_sync_bn


def _device_of(net) -> torch.device:
    return next(net.parameters()).device


def _item(dataset, i: int, augment: bool):
    """dataset[i]; with ``augment=False`` the digit scenes of a training subset come without their
    training augmentation (whole scene, original colours). Other data sets come as they are (their
    training crops are what makes them stackable)."""
    if not augment and isinstance(dataset, Subset) and hasattr(dataset.dataset, "raw"):
        from ..data.transforms import val_transform

        return val_transform()(*dataset.dataset.raw(dataset.indices[i]))
    return dataset[i]


def pick_scenes(dataset, n: int, seed: int = 0, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` items of ``dataset`` chosen by a seeded permutation, fetched under a fixed torch seed
    (the same items and augmentation every time): (images [n,3,H,W], masks [n,H,W]) on the CPU;
    items of different sizes are padded to the largest (no label there); a set smaller than ``n``
    is gone round again.
    ``augment=False`` shows digit scenes without training augmentation (see ``_item``)."""
    if n < 1:
        raise KitError(f"n: expected at least 1 scene, got {n}")
    if len(dataset) == 0:
        raise KitError("dataset: no scenes to pick from (the data set is empty)")
    # More scenes than the set holds (a small folder of one's own; CutMix takes two per scene): the
    # seeded order goes round again, so some scenes repeat.
    g = torch.Generator().manual_seed(seed)
    rounds = -(-n // len(dataset))
    order = torch.cat([torch.randperm(len(dataset), generator=g) for _ in range(rounds)])[:n].tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        items = [_item(dataset, i, augment) for i in order]
    # Real validation images differ in size: each is padded at its bottom and right to the largest,
    # with the mean colour (0 once normalised) and no label, so the padding never counts in a score.
    h = max(torch.as_tensor(x).shape[-2] for x, _ in items)
    w = max(torch.as_tensor(x).shape[-1] for x, _ in items)
    images = torch.zeros(n, 3, h, w)
    masks = torch.full((n, h, w), IGNORE_INDEX, dtype=torch.long)
    for k, (x, m) in enumerate(items):
        x, m = finish_images(torch.as_tensor(x)).float(), torch.as_tensor(m).long()
        images[k, :, : x.shape[-2], : x.shape[-1]] = x
        masks[k, : m.shape[-2], : m.shape[-1]] = m
    return images, masks


def teacher_logits(nets, images: torch.Tensor, train_mode: bool = False) -> list[torch.Tensor]:
    """Both nets' logits for ``images`` (no grad, fp32, on the CPU). Eval mode by default (BatchNorm
    running statistics); ``train_mode=True`` uses batch statistics as the training loop's teachers
    do. The nets' modes are restored afterwards."""
    outs = []
    for net in nets:
        was = net.training
        net.train(train_mode)
        try:
            with torch.no_grad():
                outs.append(net(images.to(_device_of(net))).float().cpu())
        finally:
            net.train(was)
    return outs


def pseudo_labels_on_scenes(nets, data, cfg, n: int = 4, seed: int = 0, augment: bool = False):
    """Both nets' pseudo labels on ``n`` unlabeled scenes, built by the training step's own function
    (``method.steps.pseudo_labels``) under ``cfg``'s recipe: CutMix boxes when ``cfg.cutmix_boxes`` > 0
    (u1 is another ``n`` scenes), the affine student view when ``cfg.student_aug="affine"``, the
    teachers' BatchNorm mode, union rule and weights of ``cfg``. The draws come from a generator
    seeded by ``seed``, so the same call gives the same scenes, boxes and warps.

    ``data``: a ``DataBundle`` (its ``unlabeled`` set is used) or any data set of (image, mask).
    Returns (the students' images [n,3,H,W] normalised, true masks [n,H,W] (255 where unknown),
    PseudoLabels with no intersection or union label where the step gives none), all on the CPU.
    The disagreement indicator is computed over these n scenes as one batch, as over a training
    batch. The nets are left as they were (modes and BatchNorm statistics)."""
    import dataclasses

    from ..data.loaders import Batch
    from .steps import pseudo_labels

    if len(nets) != 2:
        raise KitError(f"nets: pseudo labels need the two nets of a CPS/CPCL run, got {len(nets)}")
    dataset = getattr(data, "unlabeled", data)
    mixing = cfg.cutmix_boxes > 0
    images, masks = pick_scenes(dataset, 2 * n if mixing else n, seed, augment)
    device = _device_of(nets[0])
    images, masks = images.to(device), masks.to(device)
    u0, m0 = images[:n], masks[:n]
    u1, m1 = (images[n:], masks[n:]) if mixing else (None, None)
    batch = Batch(None, None, u0, m0, u1, m1)
    was = [net.training for net in nets]
    # Train-mode teachers update BatchNorm's running statistics: let copies do that, with plain
    # BatchNorm (a SyncBatchNorm would wait for the other processes, which are not drawing figures).
    teachers = [without_sync_bn(net) for net in nets] if cfg.teacher_bn == "train" else nets
    try:
        for net in teachers:
            net.train()
        with torch.no_grad():
            p = pseudo_labels(teachers, batch, dataclasses.replace(cfg, channels_last=False),
                              torch.Generator().manual_seed(seed))
    finally:
        for net, mode in zip(nets, was):
            net.train(mode)
    labels = p.labels
    if p.void is not None:
        labels = dataclasses.replace(labels, inter=labels.inter.masked_fill(p.void, IGNORE_INDEX),
                                     union=labels.union.masked_fill(p.void, IGNORE_INDEX))
    labels = dataclasses.replace(labels, **{f.name: getattr(labels, f.name).float().cpu()
                                            if getattr(labels, f.name).is_floating_point()
                                            else getattr(labels, f.name).cpu()
                                            for f in dataclasses.fields(labels)})
    return p.image.float().cpu(), p.truth.cpu(), labels


def predict_scenes(net, dataset, n: int = 4, seed: int = 0):
    """(images [n,3,H,W], true masks [n,H,W], one net's argmax predictions [n,H,W]) for ``n`` scenes
    of ``dataset`` (the same scenes for the same ``seed``, so several nets can be compared)."""
    images, masks = pick_scenes(dataset, n, seed)
    return images, masks, teacher_logits([net], images)[0].argmax(1)


# ------------------------------------------------------------------------------------------------
# the overlay panels of pseudo labels, as arrays


OVERLAY_TITLES = ["image", "true mask", "net 1 (y₁)", "net 2 (y₂)", "intersection → net 1",
                  "union → net 2", "weight ω_inter", "weight ω_union"]


def overlay_panels(images, masks, labels, b: int, c: int, threshold: float) -> list:
    """The eight panels of scene b: (array, is_weight) pairs in ``OVERLAY_TITLES`` order."""
    inter, union = labels.inter[b].clone(), labels.union[b].clone()
    w_inter, w_union = labels.w_inter[b].float().cpu(), labels.w_union[b].float().cpu()
    if threshold > 0:
        inter[w_inter < threshold] = IGNORE_INDEX
        union[w_union < threshold] = IGNORE_INDEX
    w_inter_shown = np.ma.masked_where(~labels.agree[b].cpu().numpy(), w_inter.numpy())
    maps = [colourise(m, c) for m in (masks[b], labels.y1[b], labels.y2[b], inter, union)]
    return [(display_image(images[b]), False), *[(m, False) for m in maps],
            (w_inter_shown, True), (w_union.numpy(), True)]


def pseudo_label_panels(images, masks, labels, num_classes: int, gap: int = 2) -> np.ndarray:
    """``prediction_overlays``' eight panels of every scene as one RGB array (float in [0, 1],
    [n·H + gaps, 8·W + gaps, 3]; one row per scene, columns in ``OVERLAY_TITLES`` order, the weights
    in viridis with grey where there is no intersection label), for TensorBoard: an array, not a
    Figure, so logging needs no figure rendering."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis").with_extremes(bad=IGNORE_GREY)
    rows = []
    for b in range(len(images)):
        tiles = []
        for panel, is_weight in overlay_panels(images, masks, labels, b, num_classes, 0.0):
            tile = cmap(np.ma.masked_invalid(np.ma.clip(panel, 0, 1)))[..., :3] if is_weight else panel
            tiles.append(np.asarray(tile, dtype=np.float32))
        h = tiles[0].shape[0]
        sep = np.ones((h, gap, 3), dtype=np.float32)
        rows.append(np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=1))
    sep = np.ones((gap, rows[0].shape[1], 3), dtype=np.float32)
    return np.clip(np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0), 0, 1)
