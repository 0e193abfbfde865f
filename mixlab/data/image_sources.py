"""Where the images of a classification task come from. Each source returns, for a split and a
list of class names, ``images`` uint8 [N,H,W,3] and ``labels`` int64 [N] indexing that list.

- ``CIFAR100Source``: the torchvision pickle layout ``<root>/cifar-100-python/{train,test,meta}``
  (torchvision download when online).
- ``ImageFolderSource``: ``<root>/<split>/<class name>/*.{png,jpg,jpeg}`` (Tiny-ImageNet style
  after its val/ is sorted into class folders), resized to ``image_size``.
- ``DigitFashionStandIn``: the OFFLINE STAND-IN, not CIFAR/ImageNet. Class k of the task's
  class list (the union over its sub-datasets, whichever subset is loaded) is MNIST digit k (k < 10) or Fashion-MNIST class k - 10, padded to 32x32,
  colourised with random per-image foreground/background colours and resized to
  ``image_size``. Same interface, so every code path runs without the internet.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from mixlab.core.errors import ArgumentError, ConfigError, DataNotFoundError
from mixlab.core.validate import PositiveInt, checked
from mixlab.data import sources

SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ArgumentError("split", f"unknown split '{split}' (choose {'|'.join(SPLITS)})")


def _select(images: np.ndarray, labels: np.ndarray, names: list[str], wanted: list[str]):
    """Keep the samples of `wanted` classes, relabelled to their index in `wanted`."""
    index = {n: i for i, n in enumerate(names)}
    for name in wanted:
        if name not in index:
            raise ConfigError("data.subsets", f"unknown class name '{name}' (not in the source's {len(names)} classes)")
    remap = np.full(len(names), -1, dtype=np.int64)
    for i, name in enumerate(wanted):
        remap[index[name]] = i
    new = remap[np.asarray(labels, dtype=np.int64)]
    keep = new >= 0
    return images[keep], new[keep]


class CIFAR100Source:
    @checked
    def __init__(self, root: str | Path = "data", download: bool = True):
        self.root, self.download = Path(root), download
        self.dir = self.root / "cifar-100-python"

    def _ensure(self) -> None:
        if (self.dir / "meta").is_file():
            return
        hint = "CIFAR-100 is not reachable offline: use data=task_a_standin (or copy cifar-100-python/ under data/)"
        if not self.download or not sources.internet_reachable("www.cs.toronto.edu", 443):
            raise DataNotFoundError(f"CIFAR-100 not found under {self.dir}. {hint}")
        from torchvision.datasets import CIFAR100

        CIFAR100(str(self.root), train=True, download=True)

    def class_names(self) -> list[str]:
        self._ensure()
        with open(self.dir / "meta", "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        return list(meta["fine_label_names"])

    def load(self, split: str, wanted: list[str]) -> tuple[np.ndarray, np.ndarray]:
        _check_split(split)
        names = self.class_names()
        with open(self.dir / split, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return _select(images, np.asarray(entry["fine_labels"]), names, wanted)


class ImageFolderSource:
    EXTENSIONS = (".png", ".jpg", ".jpeg")

    @checked
    def __init__(self, root: str | Path = "data/tiny-imagenet", image_size: PositiveInt = 64):
        self.root, self.image_size = Path(root), image_size

    def class_names(self, split: str = "train") -> list[str]:
        folder = self.root / split
        if not folder.is_dir():
            raise DataNotFoundError(f"image folder {folder} not found (layout <root>/<split>/<class>/*.png); "
                                    "offline use data=task_b_standin")
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def load(self, split: str, wanted: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        _check_split(split)
        names = self.class_names(split)
        images, labels = [], []
        for name in wanted:
            if name not in names:
                raise ConfigError("data.subsets", f"unknown class name '{name}' (no folder {self.root / split / name})")
            for path in sorted((self.root / split / name).iterdir()):
                if path.suffix.lower() in self.EXTENSIONS:
                    img = Image.open(path).convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
                    images.append(np.asarray(img, dtype=np.uint8))
                    labels.append(wanted.index(name))
        size = self.image_size
        return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8), np.asarray(labels, dtype=np.int64)


class DigitFashionStandIn:
    """Offline stand-in (see module doc). ``per_class`` caps images per class and split
    (CIFAR-100 has 500 train / 100 test per class)."""

    needs_vocabulary = True

    @checked
    def __init__(self, root: str | Path = "data", image_size: PositiveInt = 32,
                 per_class: dict[Literal["train", "test"], PositiveInt] | None = None, download: bool = True, seed: int = 0):
        self.root, self.image_size, self.download, self.seed = root, image_size, download, seed
        self.per_class = {"train": 500, "test": 100, **(per_class or {})}

    def load(self, split: str, wanted: list[str], vocabulary: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`vocabulary`: all class names of the task (the union over sub-datasets), so that a
        class name maps to the same stand-in class whether one subset or the union is loaded."""
        _check_split(split)
        vocabulary = list(vocabulary or wanted)
        if len(vocabulary) > 20:
            raise ConfigError("data.subsets", f"the digit/fashion stand-in has 20 classes, the task asks for {len(vocabulary)}")
        missing = [n for n in wanted if n not in vocabulary]
        if missing:
            raise ConfigError("data.subsets", f"unknown class name '{missing[0]}' (not in the task's classes)")
        rng = np.random.default_rng(self.seed + (0 if split == "train" else 1))
        chunks, labels = [], []
        for label, name in enumerate(wanted):
            k = vocabulary.index(name)
            dataset, cls = ("mnist", k) if k < 10 else ("fashion_mnist", k - 10)
            imgs, labs = sources.load_split(self.root, dataset, split, download=self.download)
            idx = np.flatnonzero(labs == cls)[: self.per_class[split]]
            chunks.append(imgs[idx])
            labels.append(np.full(len(idx), label, dtype=np.int64))
        gray = torch.from_numpy(np.concatenate(chunks)).float().div(255.0)  # [N,28,28]
        gray = F.pad(gray, (2, 2, 2, 2)).unsqueeze(1)  # [N,1,32,32]
        if self.image_size != 32:
            gray = F.interpolate(gray, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        n = gray.shape[0]
        fg = torch.from_numpy(rng.uniform(0.3, 1.0, (n, 3, 1, 1))).float()
        bg = torch.from_numpy(rng.uniform(0.0, 0.5, (n, 3, 1, 1))).float()
        noise = torch.from_numpy(rng.normal(0, 0.05, tuple(gray.shape[:1]) + (3,) + tuple(gray.shape[2:]))).float()
        rgb = (bg * (1 - gray) + fg * gray + noise).clamp(0, 1)
        images = (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return images, np.concatenate(labels)
