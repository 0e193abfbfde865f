"""Train a mixlab system: `python train.py experiment=baseline [key=value ...]`."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from mixlab.cli import run_or_exit
    from mixlab.pipeline import train

    run_or_exit(train, cfg)


if __name__ == "__main__":
    main()
