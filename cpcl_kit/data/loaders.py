"""Exactly resumable semi-supervised batch streams.

Three streams are drawn per iteration: labeled (x_l, y_l) and two independently shuffled unlabeled
batches (u0, u1; CutMix mixes u0 with u1). Each stream walks an infinite concatenation of per-epoch
permutations, so batches may straddle epoch boundaries and no sample is dropped. The batch at
iteration i -- its indices and its augmentation randomness -- is a pure function of (seed, i):
every sample's transform runs under a private torch seed derived from (seed, stream, i, slot).
Restarting with ``start=i`` therefore yields the very batches an uninterrupted run would have seen.
Only torch's RNG is controlled: transforms must not draw from python's ``random`` or numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..constants import IGNORE_INDEX as IGNORE
from ..errors import KitError

LABELED, UNLABELED_0, UNLABELED_1 = 0, 1, 2


@dataclass
class Batch:
    """One training iteration's data.

    x_l float [B,3,H,W], y_l int64 [B,H,W] (255 = ignore); u0, u1 float [Bu,3,H,W];
    u0_mask, u1_mask int64 [Bu,H,W]: the true masks where known, else 255 -- for analysis only,
    never for training. As a loader yields them, images may be uint8 crops [B,4,H,W] and masks
    uint8 (a deferred ``train_transform``; ``engine.device.batch_to`` finishes them on the device).
    u* are None for ``supervised_batches``. shard (rank, world size): this process's part of the
    global batch, whose slot ``s * world + rank`` is this batch's slot ``s``
    (``_IterationSampler.keys``); (0, 1) on one process.
    """

    x_l: torch.Tensor
    y_l: torch.Tensor
    u0: torch.Tensor | None = None
    u0_mask: torch.Tensor | None = None
    u1: torch.Tensor | None = None
    u1_mask: torch.Tensor | None = None
    shard: tuple[int, int] = (0, 1)

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: fn(v) if isinstance(v := getattr(self, f.name), torch.Tensor) else v
                        for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        """Move every tensor to `device`."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure, well-mixed function of the integer parts."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class _SeededStreams(Dataset):
    """Indexed by (stream, index, sample_seed): runs datasets[stream][index] under that torch seed."""

    def __init__(self, datasets: list[Dataset]):
        self.datasets = datasets

    def __len__(self) -> int:  # only so DataLoader is happy; the batch sampler drives indexing
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int, int]):
        stream, index, sample_seed = key
        # fork_rng leaves the caller's global RNG untouched, so the training loop's own draws
        # (CutMix boxes, dropout) do not depend on how many samples were loaded.
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone, which the transforms draw from: ``torch.manual_seed`` would also
            # queue a CUDA seeding (formatting a stack trace each time), a third of a digit sample's cost.
            torch.default_generator.manual_seed(sample_seed)
            image, mask = self.datasets[stream][index]
        return stream, image, mask


class _IterationSampler(Sampler):
    """Yields, for iterations start..iterations-1, the list of (stream, index, seed) keys of that iteration."""

    def __init__(self, sizes: dict[int, int], batch_sizes: dict[int, int], seed: int, start: int, iterations: int,
                 rank: int = 0, world_size: int = 1):
        self.sizes, self.batch_sizes = sizes, batch_sizes
        self.seed, self.start, self.iterations = seed, start, iterations
        self.rank, self.world = rank, world_size
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return self.iterations - self.start

    def _perm(self, stream: int, epoch: int) -> torch.Tensor:
        key = (stream, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:  # only the current and next epoch of each stream are ever needed
                self._perms.clear()
            g = torch.Generator().manual_seed(_derive_seed(self.seed, stream, epoch, 0x5EED))
            self._perms[key] = torch.randperm(self.sizes[stream], generator=g)
        return self._perms[key]

    def keys(self, i: int) -> list[tuple[int, int, int]]:
        """This process's sample keys of iteration i (pure function of seed, i, rank and world size).

        With W processes the global batch of iteration i is W·b consecutive positions of the
        stream and process r takes every W-th one (DistributedSampler-style sharding); W = 1 is
        the single-device stream.
        """
        out = []
        for stream, b in self.batch_sizes.items():
            n = self.sizes[stream]
            for slot in range(b):
                global_slot = slot * self.world + self.rank
                pos = i * b * self.world + global_slot
                index = int(self._perm(stream, pos // n)[pos % n])
                out.append((stream, index, _derive_seed(self.seed, stream, i, global_slot)))
        return out

    def __iter__(self):
        for i in range(self.start, self.iterations):
            yield self.keys(i)


class _Collate:
    """Stacks one iteration's samples into a Batch (top-level class so worker processes can pickle it)."""

    def __call__(self, samples) -> Batch:
        by_stream: dict[int, tuple[list, list]] = {}
        for stream, image, mask in samples:
            xs, ys = by_stream.setdefault(stream, ([], []))
            xs.append(image)
            ys.append(mask)
        stacked = {s: (torch.stack(xs), _compact(torch.stack(ys), s != LABELED)) for s, (xs, ys) in by_stream.items()}
        x_l, y_l = stacked[LABELED]
        u0, u0_mask = stacked.get(UNLABELED_0, (None, None))
        u1, u1_mask = stacked.get(UNLABELED_1, (None, None))
        return Batch(x_l, y_l, u0, u0_mask, u1, u1_mask)


def _compact(masks: torch.Tensor, unlabeled: bool) -> torch.Tensor | None:
    """Masks as they travel from a loader worker: uint8 where every value fits (the device side
    makes them int64 again, ``engine.device.batch_to``: an eighth of the bytes through shared
    memory); None for unlabeled images without any true label (a data set on disk), which only
    the pseudo-label statistics would read, as unknown."""
    if unlabeled and bool((masks == IGNORE).all()):
        return None
    if masks.numel():
        low, high = torch.aminmax(masks)
        if 0 <= int(low) and int(high) <= 255:
            return masks.to(torch.uint8)
    return masks.long()


def _check_dataset(ds: Sized, name: str) -> None:
    if len(ds) == 0:
        raise KitError(f"{name}: the data set is empty (expected at least one image)")


def _check_batch(b: int, name: str) -> None:
    if int(b) < 2:
        raise KitError(f"{name}: expected a batch size >= 2 (BatchNorm in train mode needs 2), got {b}")


def _batches(datasets, batch_sizes, iterations, seed, start, num_workers, pin_memory,
             rank=0, world_size=1) -> Iterator[Batch]:
    if start < 0 or iterations < start:
        raise KitError(f"start/iterations: expected 0 <= start <= iterations, got start={start}, iterations={iterations}")
    if num_workers < 0:
        raise KitError(f"num_workers: expected >= 0, got {num_workers}")
    sampler = _IterationSampler({s: len(d) for s, d in enumerate(datasets)}, batch_sizes, seed, start, iterations,
                                rank, world_size)
    loader = DataLoader(
        _SeededStreams(datasets),
        batch_sampler=sampler,
        collate_fn=_Collate(),
        num_workers=num_workers,
        pin_memory=pin_memory,
        # DataLoader draws worker base seeds from this generator instead of the global RNG.
        generator=torch.Generator().manual_seed(_derive_seed(seed, start, 0xD1)),
    )
    return _sharded(iter(loader), (rank, world_size))


def _sharded(batches, shard: tuple[int, int]) -> Iterator[Batch]:
    for batch in batches:
        batch.shard = shard
        yield batch


def semi_supervised_batches(
    labeled_ds: Dataset,
    unlabeled_ds: Dataset,
    batch_size: int,
    unlabeled_batch_size: int | None = None,
    iterations: int = 1,
    seed: int = 0,
    start: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    pairs: bool = True,
) -> Iterator[Batch]:
    """Yield exactly ``iterations - start`` Batches (iterations start..iterations-1).

    batch_size: labeled images per batch; unlabeled_batch_size: images in each of u0 and u1
    (default batch_size). Items of both data sets are (image [3,H,W] float, mask [H,W]) after their
    own transforms, which must give equal sizes within a stream (e.g. a train_transform crop).
    Checks run when called, before the first batch is drawn. ``rank``/``world_size`` shard every
    stream across processes (multi-GPU); batch sizes are per process. ``pairs=False``: no u1 stream
    (``u1`` is None), for a method that mixes nothing; u0 is the same either way.
    """
    ub = batch_size if unlabeled_batch_size is None else unlabeled_batch_size
    _check_batch(batch_size, "batch_size")
    _check_batch(ub, "unlabeled_batch_size")
    _check_dataset(labeled_ds, "labeled_ds")
    _check_dataset(unlabeled_ds, "unlabeled_ds")
    sizes = {LABELED: batch_size, UNLABELED_0: ub, **({UNLABELED_1: ub} if pairs else {})}
    # u0 and u1 walk the same unlabeled set under different stream ids, hence different orders; a
    # stream's order and augmentation depend on its id alone, so leaving u1 out leaves u0 as it was.
    datasets = [labeled_ds, unlabeled_ds, unlabeled_ds][:len(sizes)]
    return _batches(datasets, sizes, iterations, seed, start, num_workers, pin_memory, rank, world_size)


def supervised_batches(
    labeled_ds: Dataset,
    batch_size: int,
    iterations: int = 1,
    seed: int = 0,
    start: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Labeled-only Batches (u0/u1 fields None) for the supervised baseline.

    For the same (seed, i) the labeled batch equals the one ``semi_supervised_batches`` yields, so
    baselines and CPCL see identical labeled data.
    """
    _check_batch(batch_size, "batch_size")
    _check_dataset(labeled_ds, "labeled_ds")
    return _batches([labeled_ds], {LABELED: batch_size}, iterations, seed, start, num_workers, pin_memory,
                    rank, world_size)
