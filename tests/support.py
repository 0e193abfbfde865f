"""Helpers shared by the test folders (tests/core, tests/<method>): tiny data written by the
tests, config composition that mirrors `python train.py` / `python evaluate.py` without leaving
the test process, and the smoke-run registry.

Smoke runs: every experiment runs under `debug=smoke` once per session (`SmokeRuns.run`), and
method tests reuse those runs. An experiment that starts from other runs' checkpoints declares
them in its method's test folder, `tests/<method>/experiments.yaml`:

    mcl_k4_gate:                       # experiment
      model.experts_ckpt:              # the key that takes the checkpoint(s)
        experiment: mcl_k4             # a prerequisite run (its overrides optional)
        ckpt: last                     # last | best
    moe_task_a:
      model.init_from:                 # a list of runs -> a list of checkpoints
        - {experiment: pretrain_task_a, overrides: [data.subset=1], ckpt: best}
"""

import os
from pathlib import Path

import numpy as np
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.utils.data import DataLoader, TensorDataset

from mixlab.core.distributed import per_device_batch_size
from mixlab.score.system import ScoreDiffusion

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


# ----- tiny data ----------------------------------------------------------------------------
def write_tiny_mnist(root: Path, n_train: int = 480, n_test: int = 128, seed: int = 0) -> Path:
    """MNIST IDX files of digit-like 28x28 uint8 images (a bright bar whose angle encodes the label)."""
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


def write_tiny_fashion(root: Path, per_class: int = 48, seed: int = 1) -> Path:
    """Fashion-MNIST IDX files: `per_class` blob images per class and split (the position of the
    blob encodes the class), for the MoE tasks' offline stand-in."""
    from mixlab.data.sources import write_idx

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
        cy, cx = 6 + 2 * (labels % 5), 10 + 8 * (labels // 5)
        img = 255 * np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 8)
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", img)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


# ----- configs ------------------------------------------------------------------------------
# Settings under which N processes x B/N reach 1 process x B at float precision (test_ddp,
# test_multinode). SGD, not Adam: Adam divides by sqrt(v), so on parameters whose gradient is ~0
# it turns reduction-order rounding into lr-sized steps; SGD keeps the comparison at float precision.
EXACT = [
    "experiment=baseline",
    "debug=smoke",
    "model.net.dropout=0.0",
    "trainer.max_epochs=2",
    "model.optimizer._target_=torch.optim.SGD",
    "model.optimizer.lr=0.05",
]


def compose_train(overrides: list[str], data_dir: Path, out_dir: Path):
    """Compose conf/train.yaml like the CLI does, with data and outputs under tmp dirs."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir.parent / "logs")
        del cfg.hydra
    return cfg


def compose_eval(*overrides: str, data_dir: Path, weights_dir: Path | None = None, out_dir: Path | None = None):
    """conf/eval.yaml as evaluate.py composes it (the evaluator named in `overrides`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval.yaml", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
        if weights_dir is not None:
            cfg.paths.weights_dir = str(weights_dir)
        if out_dir is not None:
            cfg.out_dir = str(out_dir)
    return cfg


# ----- smoke runs ---------------------------------------------------------------------------
def prerequisites() -> dict[str, dict]:
    """{experiment: {config key: run spec or list of run specs}} from tests/*/experiments.yaml."""
    plans: dict[str, dict] = {}
    for path in sorted(TESTS.glob("*/experiments.yaml")):
        for experiment, needs in (yaml.safe_load(path.read_text()) or {}).items():
            assert experiment in EXPERIMENTS, f"{path}: no experiment named {experiment}"
            plans[experiment] = needs
    return plans


class SmokeRuns:
    """Each (experiment, overrides) trained once under debug=smoke per session; summaries memoised."""

    def __init__(self, data_dir: Path, root: Path):
        self.data_dir, self.root, self.cache, self.plans = data_dir, root, {}, prerequisites()

    def checkpoint_overrides(self, experiment: str) -> list[str]:
        """`key=ckpt` / `key=[ckpt,...]` overrides that feed an experiment its prerequisite runs."""
        out = []
        for key, spec in self.plans.get(experiment, {}).items():
            specs = spec if isinstance(spec, list) else [spec]
            paths = [self.run(s["experiment"], *s.get("overrides", []))[f"{s.get('ckpt', 'last')}_ckpt"] for s in specs]
            out.append(f"{key}=[{','.join(paths)}]" if isinstance(spec, list) else f"{key}={paths[0]}")
        return out

    def compose(self, experiment: str, *overrides: str, smoke: bool = True, out: Path | None = None):
        args = [
            f"experiment={experiment}",
            *(["debug=smoke"] if smoke else []),
            *self.checkpoint_overrides(experiment),
            *overrides,
        ]
        return compose_train(args, self.data_dir, out or self.root / f"{experiment}-{len(self.cache)}")

    def run(self, experiment: str, *overrides: str) -> dict:
        from mixlab.core.pipeline import train

        key = (experiment, *overrides)
        if key not in self.cache:
            self.cache[key] = train(self.compose(experiment, *overrides))
        return self.cache[key]


def env_for_subprocess() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "PROJECT_ROOT": str(ROOT)}


class NaNAfterLoss:
    """EpsilonLoss that turns NaN from the `after`-th call on (to test the non-finite guard)."""

    def __init__(self, after: int = 3):
        from mixlab.score.losses import EpsilonLoss

        self.after, self.calls, self.inner = after, 0, EpsilonLoss()

    def __call__(self, model, x0, sigma, noise):
        self.calls += 1
        loss = self.inner(model, x0, sigma, noise)
        return loss * float("nan") if self.calls > self.after else loss


class DataFreeScoreDiffusion(ScoreDiffusion):
    """A score-diffusion system that draws its own batches (uniform noise images), standing in
    for systems with no data set (samplers of unnormalised densities): it defines
    train/val dataloaders and owns `batch_size`, whose split over the ranks it checks."""

    needs_data = False
    batch_size = 16

    def check_batch_split(self, world_size, accumulate=1):
        per_device_batch_size(self.batch_size, world_size, key="model.batch_size", accumulate=accumulate)

    def _loader(self, n):
        x = torch.rand(n, *self.image_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return DataLoader(TensorDataset(x), batch_size=self.batch_size // self.world()[0])

    def train_dataloader(self):
        return self._loader(64)

    def val_dataloader(self):
        return self._loader(32)
