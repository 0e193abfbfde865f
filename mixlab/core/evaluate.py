"""`python evaluate.py ckpt=PATH [options]`: the checkpoint's system class names its evaluator.

An evaluator is a config `conf/evaluator/<name>.yaml` (its options are top-level keys, its
`run:` the function called with the composed config). The core only reads the class from the
checkpoint: it knows no method.
"""

import signal
from pathlib import Path

import torch
from hydra.utils import get_method
from omegaconf import DictConfig

from mixlab.core.checkpoint import read_checkpoint, resolve_checkpoint, run_config, system_class
from mixlab.core.config import require
from mixlab.core.errors import Interrupted

EVALUATOR_DIR = Path(__file__).resolve().parents[2] / "conf" / "evaluator"


def available_evaluators() -> list[str]:
    return sorted(p.stem for p in EVALUATOR_DIR.glob("*.yaml"))


def evaluator_for(ckpt: str, chosen: str | None = None) -> tuple[Path, str, str]:
    """(checkpoint file, evaluator name, system class name) for `ckpt` (a file, a run dir or a
    task dir; see core.checkpoint.resolve_checkpoint). `chosen` overrides the class's default."""
    path = resolve_checkpoint(ckpt, "ckpt")
    cfg = run_config(read_checkpoint(path, "ckpt", mmap=True), path, "ckpt")
    cls = system_class(cfg.model._target_, "ckpt")
    name = chosen or cls.evaluator
    require(
        bool(name),
        "evaluator",
        f"{cls.__name__} names no evaluator; choose one: evaluator=NAME ({'|'.join(available_evaluators())})",
    )
    require(
        name in available_evaluators(), "evaluator", f"unknown evaluator '{name}' (choose {'|'.join(available_evaluators())})"
    )
    return path, name, cls.__name__


def out_dir_of(cfg: DictConfig) -> Path:
    """Where an evaluator writes: `out_dir=` when given, else <run dir>/eval beside the checkpoints."""
    return Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.ckpt).resolve().parent.parent / "eval"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: DictConfig):
    """Run the evaluator the composed config names (`run:` in conf/evaluator/<name>.yaml).
    SIGTERM/SIGINT end it with exit code 143/130 (core.signals); results are written atomically."""
    from mixlab.core.quiet import quiet_lightning
    from mixlab.core.signals import SIGTERMException, raise_on_signals

    quiet_lightning()
    raise_on_signals("evaluation")
    require(
        bool(cfg.get("run")),
        "evaluator",
        f"no evaluator chosen; evaluate.py picks it from the checkpoint, or evaluator=NAME ({'|'.join(available_evaluators())})",
    )
    try:
        return get_method(cfg.run)(cfg)
    except SIGTERMException:  # a Lightning loop inside the evaluator stopped on the signal
        raise Interrupted(
            "evaluation stopped by SIGTERM; no result files were written for the unfinished part (rerun the same command)",
            signal.SIGTERM,
        ) from None
