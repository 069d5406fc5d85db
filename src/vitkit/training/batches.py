"""Training batches for one process: this rank's share of an epoch, from the in-memory
uint8 cache, a streamed folder or WebDataset shards, resumable from any batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..data.pipeline import Data, array_batches
from .distributed import Dist
from .planner import BUDGET_IMAGES

# The default length of a run: 60 epochs (what the digits and photo defaults were measured
# at), except that without a time budget a set of more than 4,000 training images trains for
# about 240,000 images in all (at least 10 epochs): a set of 8,000 learns as much in 30 passes
# as in 60 (benchmarks/folder_default.py; benchmarks/README.md). A planned run (timed by
# vitkit.training.planner) of a set larger than the planner's BUDGET_IMAGES, whose default
# budget grows with it, trains instead as many epochs as that budget holds, at most 60: on
# CIFAR-10's 50,000 images the rule's 10 epochs used 7 of 25 minutes for 73.4%; with small
# images shifted by default the budget's 28 gave 79.2% (benchmarks/README.md, "every default
# on CIFAR-10").
DEFAULT_EPOCHS, DEFAULT_IMAGES, MIN_DEFAULT_EPOCHS = 60, 240_000, 10


def default_epochs(requested: int | None, n_train: int, time_budget: float | None,
                   planned: bool = False) -> tuple[int, str | None]:
    """The epochs to train (`requested` when given) and a note when the default shortened them;
    `planned`: the planner fits them into the budget (the most it may plan)."""
    if requested is not None:
        return requested, None
    if time_budget is not None or n_train * DEFAULT_EPOCHS <= DEFAULT_IMAGES:
        return DEFAULT_EPOCHS, None
    if planned and n_train > BUDGET_IMAGES:
        return DEFAULT_EPOCHS, (f"{n_train:,} training images: as many epochs as the default budget holds, "
                                f"at most {DEFAULT_EPOCHS} (--run.epochs sets a number)")
    epochs = max(MIN_DEFAULT_EPOCHS, round(DEFAULT_IMAGES / n_train))
    return epochs, (f"{epochs} epochs: the default for {n_train:,} training images (about "
                    f"{DEFAULT_IMAGES:,} images in all; --run.epochs sets another number)")


def batch_size_for(requested: int, n_train: int, dist: Dist, accumulate: int) -> tuple[int, str | None]:
    """The global batch size to use, and a note when it had to be lowered for a small set."""
    if requested % (dist.world * accumulate):
        raise ValueError(f"batch size {requested} is not divisible by processes x accumulation "
                         f"steps ({dist.world} x {accumulate})")
    if n_train >= requested:
        return requested, None
    unit = dist.world * accumulate
    size = max(unit, n_train // unit * unit)
    return size, f"batch size lowered to {size}: only {n_train} training images"


def train_batches(data: Data, batch_size: int, epoch: int, start: int, seed: int, dist: Dist,
                  workers: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (uint8 images, labels) batches of `epoch`, from batch `start` on; the order
    depends on the seed and the epoch only, so a resumed run sees what it would have seen."""
    if data.in_memory:
        yield from array_batches(data.train, batch_size, epoch, seed, dist.rank, dist.world, start)
        return
    from torch.utils.data import DataLoader, DistributedSampler

    from ..data.shards import ShardStream

    pin = device.type == "cuda"
    if isinstance(data.train, ShardStream):  # every rank the same number of whole batches
        ds = data.train
        ds.batch_size, ds.rank, ds.world, ds.seed = batch_size, dist.rank, dist.world, seed
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=batch_size // dist.world, num_workers=workers, pin_memory=pin)
    else:
        sampler = DistributedSampler(data.train, dist.world, dist.rank, shuffle=True, seed=seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
        loader = DataLoader(data.train, batch_size=batch_size // dist.world, sampler=sampler,
                            num_workers=workers, drop_last=True, pin_memory=pin, persistent_workers=False)
    for i, batch in enumerate(loader):
        if i >= start:
            yield batch
