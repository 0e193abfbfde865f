"""MNIST / Fashion-MNIST LightningDataModule: in-memory tensors in [-1, 1], global batch size."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, SequentialSampler, TensorDataset

from mixlab.data.sources import load_split
from mixlab.errors import ConfigError


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """Split the global batch over processes; raises ConfigError naming data.batch_size."""
    if not isinstance(global_batch_size, int) or isinstance(global_batch_size, bool) or global_batch_size <= 0:
        raise ConfigError("data.batch_size", f"must be a positive integer, got {global_batch_size!r}")
    if global_batch_size % world_size:
        raise ConfigError(
            "data.batch_size",
            f"global batch size {global_batch_size} is not divisible by {world_size} devices "
            "(trainer.devices x trainer.num_nodes)",
        )
    return global_batch_size // world_size


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [-1, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.float32))[:, None] / 127.5 - 1.0


class EpochSeededSampler(Sampler[int]):
    """A fresh permutation per epoch from seed + epoch: a resumed run sees the same order as an
    uninterrupted one (Lightning calls `set_epoch`)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class MNISTDataModule(L.LightningDataModule):
    """Train = the train split, val = the test split (as in the seed). Batches are (x, y) with
    x float32 [B, 1, 28, 28] in [-1, 1]. `batch_size` is global (split over devices)."""

    num_channels, image_size = 1, 28

    def __init__(
        self,
        root: str = "data",
        dataset: str = "mnist",
        batch_size: int = 256,
        num_workers: int = 0,
        shuffle: bool = True,
        train_limit: int | None = None,
        val_limit: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        download: bool = True,
    ):
        super().__init__()
        self.root, self.dataset, self.batch_size = root, dataset, batch_size
        self.num_workers, self.shuffle, self.seed = num_workers, shuffle, seed
        self.train_limit, self.val_limit = train_limit, val_limit
        self.pin_memory, self.download = pin_memory, download
        self.per_device_batch_size = per_device_batch_size(batch_size, 1)
        self.train_set = self.val_set = None

    def _split(self, split: str, limit: int | None) -> TensorDataset:
        images, labels = load_split(self.root, self.dataset, split, download=self.download)
        images, labels = images[:limit], labels[:limit]
        return TensorDataset(to_unit_range(images), torch.from_numpy(np.array(labels)))

    def prepare_data(self) -> None:
        for split in ("train", "test"):
            load_split(self.root, self.dataset, split, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        self.per_device_batch_size = per_device_batch_size(self.batch_size, world)
        if self.train_set is None:
            self.train_set = self._split("train", self.train_limit)
            self.val_set = self._split("test", self.val_limit)

    def _loader(self, dataset: TensorDataset, sampler, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.per_device_batch_size, sampler=sampler, drop_last=drop_last,
            num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
            # own generator: creating an iterator must not consume the global RNG, or a resumed
            # run's dropout masks would drift from the uninterrupted run's
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        n = len(self.train_set)
        sampler = EpochSeededSampler(n, self.seed) if self.shuffle else SequentialSampler(range(n))
        return self._loader(self.train_set, sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, SequentialSampler(range(len(self.val_set))), drop_last=False)

    def real_images(self, n: int, split: str = "test") -> torch.Tensor:
        """The first n images of a split in file order, [n, 1, 28, 28] in [-1, 1]."""
        images, _ = load_split(self.root, self.dataset, split, download=self.download)
        if n > len(images):
            raise ConfigError("n", f"asked for {n} real {split} images but {self.dataset} has {len(images)}")
        return to_unit_range(images[:n])
