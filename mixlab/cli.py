"""Shared by the Hydra entry points: user-facing errors become one line on stderr, exit 2."""

import sys
from collections.abc import Callable

from omegaconf import DictConfig

from mixlab.errors import MixlabError


def run_or_exit(fn: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    try:
        fn(cfg)
    except MixlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
