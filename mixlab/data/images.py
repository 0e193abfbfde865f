"""Multi-task image classification DataModule (the MoE tasks A/B).

A task is a list of sub-datasets, each a list of class names, declared in yaml. ``subset=m``
(1-based) trains on sub-dataset m alone (labels 0..4, the per-subset model); ``subset=null``
takes the union of all classes, labelled 0..C-1 in order of first appearance (so expert i's
own classes come first in sub-dataset order; a class shared by two sub-datasets is loaded once).

Honest splits: ``val_fraction`` of each train class is carved out (seeded) for early stopping
and checkpoint selection; the test split is only served by ``test_dataloader``. Per-channel
normalisation statistics come from the remaining train images only.
Batches ``(x, y)``: x float32 [B,3,H,W] normalised, y int64 [B].
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader, Sampler, TensorDataset

from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.validate import NonNegativeInt, PositiveInt, checked
from mixlab.data.base import EpochSeededSampler, GlobalBatchDataModule


@checked
def task_classes(subsets: list[list[str]], subset: PositiveInt | None) -> list[str]:
    """Class names of sub-dataset `subset` (1-based), or the union of all (first appearance)."""
    if not subsets or any(not s for s in subsets):
        raise ArgumentError("subsets", "must be a non-empty list of non-empty class-name lists")
    if subset is not None:
        if subset > len(subsets):
            raise ArgumentError("subset", f"must be null (all) or 1..{len(subsets)}, got {subset!r}")
        return list(subsets[subset - 1])
    union: list[str] = []
    for names in subsets:
        union += [n for n in names if n not in union]
    return union


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train_idx, val_idx): round(fraction * n_c) of each class c go to val."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def channel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std in [0,1] units of uint8 [N,H,W,3] images."""
    x = torch.from_numpy(images).double().div(255.0)
    return x.mean(dim=(0, 1, 2)).float(), x.std(dim=(0, 1, 2)).clamp_min(1e-6).float()


def normalise(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(255.0).permute(0, 3, 1, 2)
    return (x - mean[:, None, None]) / std[:, None, None]


def augment_batch(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) + horizontal flip, per sample."""
    b, _, h, w = x.shape
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


class ImageTaskDataModule(GlobalBatchDataModule):
    """``batch_size`` is GLOBAL (split over devices, divisibility checked)."""

    @checked
    def __init__(self, source: Any, subsets: list[list[str]], subset: PositiveInt | None = None, task: str = "task",
                 image_size: PositiveInt | None = None, batch_size: PositiveInt = 32,
                 val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1, augment: bool = False,
                 num_workers: NonNegativeInt = 0, train_limit: PositiveInt | None = None, val_limit: PositiveInt | None = None,
                 test_limit: PositiveInt | None = None, seed: int = 0):
        super().__init__(batch_size)
        self.subsets = [list(s) for s in subsets]
        self.class_names = task_classes(self.subsets, subset)
        self.source, self.subset, self.task, self.image_size = source, subset, task, image_size
        self.val_fraction, self.augment, self.num_workers = val_fraction, augment, num_workers
        self.limits = {"train": train_limit, "val": val_limit, "test": test_limit}
        self.seed = int(seed)
        self.sets: dict[str, TensorDataset] = {}
        self.mean = self.std = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _load(self, split: str, names: list[str] | None = None):
        names = self.class_names if names is None else names
        if getattr(self.source, "needs_vocabulary", False):  # the stand-in maps names via the task's union
            return self.source.load(split, names, vocabulary=task_classes(self.subsets, None))
        return self.source.load(split, names)

    def prepare_data(self) -> None:
        self._load("train", self.class_names[:1])  # fails early with the fix when data is missing

    def _limit(self, images: np.ndarray, labels: np.ndarray, split: str):
        limit = self.limits[split]
        if limit is None or limit >= len(labels):
            return images, labels
        order = np.sort(np.random.default_rng(self.seed + 7).permutation(len(labels))[:limit])
        return images[order], labels[order]

    def build(self) -> None:
        """Load, carve val, compute train stats, normalise (idempotent)."""
        if self.sets:
            return
        images, labels = self._load("train")
        tr, va = carve_validation(labels, self.val_fraction, self.seed)
        parts = {"train": self._limit(images[tr], labels[tr], "train"), "val": self._limit(images[va], labels[va], "val")}
        test_images, test_labels = self._load("test")
        parts["test"] = self._limit(test_images, test_labels, "test")
        self.mean, self.std = channel_stats(parts["train"][0])  # train only
        for split, (imgs, labs) in parts.items():
            self.sets[split] = TensorDataset(normalise(imgs, self.mean, self.std), torch.from_numpy(labs))

    def setup(self, stage: str | None = None) -> None:
        self.bind_trainer()
        self.build()
        if self.batch_size > len(self.sets["train"]):
            raise ConfigError("data.batch_size", f"global batch size {self.batch_size} exceeds the {len(self.sets['train'])} training images")

    def _loader(self, split: str, shuffle: bool, drop_last: bool) -> DataLoader:
        self.build()
        data = self.sets[split]
        sampler: Sampler = EpochSeededSampler(len(data), self.seed, shuffle, self.rank, self.world_size)
        return DataLoader(data, batch_size=self.per_device_batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, drop_last=True)  # drop_last: no batch of 1 for BatchNorm

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, drop_last=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.augment and self.trainer is not None and self.trainer.training:
            x, y = batch
            return augment_batch(x), y
        return batch

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised [B,3,H,W] -> [0,1] for figures."""
        return (x * self.std[:, None, None].to(x) + self.mean[:, None, None].to(x)).clamp(0, 1)
