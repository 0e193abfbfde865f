"""MNIST / Fashion-MNIST as a LightningDataModule: in-memory tensors in [-1, 1], batches ``(x, y)``.

``x``: float32 [B,1,28,28] in [-1,1] (``u8 / 127.5 - 1``); ``y``: int64 [B] class labels.
train = the train split, val = the test split (both optionally truncated to their first images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from mixlab.core.errors import ConfigError
from mixlab.core.validate import NonNegativeInt, PositiveInt, checked
from mixlab.data import sources
from mixlab.data.base import EpochSeededSampler, GlobalBatchDataModule


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [-1,1]."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))  # new writable array
    return (x / 127.5 - 1.0).unsqueeze(1)


class MNISTDataModule(GlobalBatchDataModule):
    """MNIST or Fashion-MNIST from ``<root>/<Name>/raw`` (see ``mixlab.data.sources``).

    ``batch_size`` is the GLOBAL batch size; each process loads ``batch_size / world_size``.
    """

    num_channels = 1
    image_size = 28
    num_classes = 10

    @checked
    def __init__(
        self,
        root: str | Path = "data",
        dataset: str = "mnist",
        batch_size: PositiveInt = 256,
        num_workers: NonNegativeInt = 0,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,  # first N training images only (debug)
        val_limit: PositiveInt | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        download: bool = True,
    ):
        super().__init__(batch_size)
        sources.image_set(dataset)  # fail fast on unknown names
        self.root, self.dataset = root, dataset
        self.num_workers, self.shuffle = num_workers, shuffle
        self.train_limit, self.val_limit, self.seed = train_limit, val_limit, seed
        self.pin_memory, self.download = pin_memory, download
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    @property
    def provenance(self) -> str:
        """Where the files came from (``SOURCE.txt`` written by ``make data``)."""
        return sources.dataset_provenance(self.root, self.dataset)

    def prepare_data(self) -> None:
        """Runs on one process per node: makes sure both splits are on disk (may download)."""
        for split in ("train", "test"):
            sources.load_split(self.root, self.dataset, split, download=self.download)

    def _tensor_dataset(self, split: str, limit: int | None, key: str) -> TensorDataset:
        images, labels = sources.load_split(self.root, self.dataset, split, download=self.download)
        if limit is not None and limit > len(labels):
            rank_zero_warn(f"{key}={limit} exceeds the {len(labels)} {split} images; using all of them")
        images, labels = images[:limit], labels[:limit]
        return TensorDataset(to_model_range(images), torch.from_numpy(np.array(labels, dtype=np.int64)))

    def setup(self, stage: str | None = None) -> None:
        self.bind_trainer()
        world_size = self.world_size
        if self.train_set is None:
            self.train_set = self._tensor_dataset("train", self.train_limit, "data.train_limit")
            self.val_set = self._tensor_dataset("test", self.val_limit, "data.val_limit")
        n_train = len(self.train_set)
        if self.per_device_batch_size * world_size > n_train:
            raise ConfigError(
                "data.batch_size",
                f"global batch size {self.batch_size} exceeds the {n_train} training images "
                "(drop_last would leave no batch; lower data.batch_size or raise data.train_limit)",
            )

    def _loader(self, dataset: TensorDataset, sampler: Sampler, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # own generator: starting an iterator must not draw from the global RNG, or a resumed
            # run's noise/dropout would drift from the uninterrupted run's
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        sampler = EpochSeededSampler(len(self.train_set), self.seed, self.shuffle, self.rank, self.world_size)
        return self._loader(self.train_set, sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        sampler = EpochSeededSampler(len(self.val_set), self.seed, False, self.rank, self.world_size)
        return self._loader(self.val_set, sampler, drop_last=False)

    @checked
    def real_images(self, n: PositiveInt, split: str = "test") -> torch.Tensor:
        """The first ``n`` images of ``split`` in file order: float32 [n,1,28,28] in [-1,1]."""
        images, _ = sources.load_split(self.root, self.dataset, split, download=self.download)
        if n > len(images):
            raise ConfigError("n", f"asked for {n} real images but the {split} split of {self.dataset} holds only {len(images)}")
        return to_model_range(images[:n])
