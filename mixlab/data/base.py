"""What every mixlab DataModule shares: `batch_size` is the GLOBAL batch of one optimizer step,
split over the processes and gradient-accumulation steps (divisibility checked before training,
naming `data.batch_size`), and a sampler whose order is the same on every rank, so N devices
reproduce one."""

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import Sampler

from mixlab.core.distributed import per_device_batch_size


class GlobalBatchDataModule(L.LightningDataModule):
    """Base DataModule: `batch_size` global; `per_device_batch_size`, `rank` and `world_size`
    are set from the trainer in `setup()` (`bind_trainer`)."""

    def __init__(self, batch_size: int):
        super().__init__()
        per_device_batch_size(batch_size, 1)  # fail fast on non-positive sizes
        self.batch_size = batch_size
        self.per_device_batch_size, self.rank, self.world_size = batch_size, 0, 1

    def check_batch_split(self, world_size: int, accumulate: int = 1) -> None:
        """Called by the pipeline before training: the global batch must split evenly."""
        per_device_batch_size(self.batch_size, world_size, accumulate=accumulate)

    def bind_trainer(self) -> None:
        """Rank, world size and micro-batch from the trainer: `batch_size` is what one optimizer
        step sees, split over the processes and the accumulation steps. Rank r's micro-batch m
        holds global positions r, r + W, ... of the m-th block of W x micro positions (the
        sampler interleaves), so N devices x A accumulation steps see the batch of one device."""
        accumulate = 1
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
            accumulate = int(getattr(self.trainer, "accumulate_grad_batches", 1))
        self.per_device_batch_size = per_device_batch_size(self.batch_size, self.world_size, accumulate=accumulate)


class EpochSeededSampler(Sampler[int]):
    """This rank's share of an epoch's order of ``range(n)``, which depends only on seed + epoch.

    The order (a permutation when ``shuffle``, else ``0..n-1``) is the same on every rank; rank r
    of W takes positions r, r + W, r + 2W, ... of it. With a per-device batch of B/W, the W
    ranks' j-th batches together hold exactly global batch j of a single process with batch B,
    so N devices reproduce one (the trainer runs with ``use_distributed_sampler=False``).
    Lightning calls ``set_epoch`` each epoch, so a resumed run sees the same order.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        return iter(order[: len(self) * self.world_size][self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.n // self.world_size


def named_subclasses(base: type) -> list[type]:
    """Every subclass of ``base`` (at any depth, in definition order) that sets its own ``name``:
    how a data set or corpus named in the config is found, without a table to edit."""
    found, todo = [], list(base.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found += [cls] if "name" in vars(cls) else []
        todo += cls.__subclasses__()
    return found
