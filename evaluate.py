"""Evaluate a checkpoint: `python evaluate.py ckpt=PATH [n=2048 solver=heun steps=20]`."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from mixlab.cli import run_or_exit
    from mixlab.evaluation import evaluate

    run_or_exit(evaluate, cfg)


if __name__ == "__main__":
    main()
