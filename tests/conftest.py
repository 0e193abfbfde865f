"""Shared fixtures: a tiny MNIST in torchvision layout written by the tests, and config
composition that mirrors `python train.py ...` without leaving the test process."""

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def write_tiny_mnist(root: Path, n_train: int = 96, n_test: int = 64, seed: int = 0) -> Path:
    """Digit-like 28x28 uint8 images (a bright bar whose angle encodes the label)."""
    from mixlab.data.sources import write_idx

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28] - 13.5
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        angle = labels[:, None, None] * np.pi / 10
        dist = np.abs(xx[None] * np.sin(angle) - yy[None] * np.cos(angle))
        img = np.clip(255 * np.exp(-(dist**2) / 4) * (np.hypot(xx, yy)[None] < 11) + rng.normal(0, 8, (n, 28, 28)), 0, 255)
        write_idx(raw / f"{split}-images-idx3-ubyte", img.astype(np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


def compose_train(overrides: list[str], data_dir: Path, out_dir: Path):
    """Compose conf/train.yaml like the CLI does, with data and outputs under tmp dirs."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir.parent / "logs")
        del cfg.hydra
    return cfg


@pytest.fixture
def make_cfg(tiny_data, tmp_path):
    def _make(*overrides: str, out: str = "run"):
        return compose_train(list(overrides), tiny_data, tmp_path / out)

    return _make


class NaNAfterLoss:
    """EpsilonLoss that turns NaN from the `after`-th call on (to test the non-finite guard)."""

    def __init__(self, after: int = 3):
        from mixlab.score.losses import EpsilonLoss

        self.after, self.calls, self.inner = after, 0, EpsilonLoss()

    def __call__(self, model, x0, sigma, noise):
        self.calls += 1
        loss = self.inner(model, x0, sigma, noise)
        return loss * float("nan") if self.calls > self.after else loss
