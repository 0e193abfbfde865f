"""The Hydra entry points (train.py, evaluate.py) in one place: compose conf/<name>.yaml, run the
task, and turn user-facing errors into one line on stderr with exit code 2."""

import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mixlab.core.errors import MixlabError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_or_exit(fn: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    try:
        fn(cfg)
    except MixlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def hydra_entry(config_name: str, task: Callable[[], Callable[[DictConfig], object]]) -> None:
    """Run `task()(cfg)` under Hydra with conf/<config_name>.yaml (task imports lazily, so
    `--help` and config errors come back fast)."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))

    @hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        run_or_exit(task(), cfg)

    main()
