"""Instantiate datamodule / system / callbacks / loggers / trainer from a config and fit."""

import json
import os
from netrc import netrc
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mixlab.callbacks.history import MetricHistory
from mixlab.core.config import build, validate_train
from mixlab.data.sources import internet_reachable
from mixlab.core.errors import ConfigError


def wandb_offline() -> bool:
    """Offline unless WANDB_MODE says otherwise or there is both an API key and a network."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    key = bool(os.environ.get("WANDB_API_KEY"))
    if not key:
        try:
            key = netrc().authenticators("api.wandb.ai") is not None
        except (OSError, Exception):
            key = False
    return not (key and internet_reachable("api.wandb.ai", 443))


def build_loggers(cfg: DictConfig | None) -> list:
    loggers = []
    for name, node in (cfg or {}).items():
        if node is None or "_target_" not in node:
            continue
        if node._target_.endswith("WandbLogger") and wandb_offline():
            rank_zero_info(f"[mixlab] logger.{name}: wandb in offline mode (no API key or no network); `wandb sync` the run dir later")
            node = OmegaConf.merge(node, {"offline": True})
        loggers.append(build(node))
    return loggers


def build_callbacks(cfg: DictConfig | None) -> list[L.Callback]:
    callbacks = [build(node) for node in (cfg or {}).values() if node is not None and "_target_" in node]
    # Weight averaging last: callbacks that sample during validation must see the EMA weights,
    # which it swaps back in its own on_validation_epoch_end (hooks run in list order). Metric
    # history just before it: it records what the others logged at the end of the epoch.
    return sorted(callbacks, key=lambda cb: (isinstance(cb, WeightAveraging), isinstance(cb, MetricHistory)))


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path, task_dir: Path) -> str | None:
    """`last` -> newest last.ckpt of this task's runs; None -> auto-resume this run dir if it has one."""
    own = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path in (None, ""):
        return str(own) if own.exists() else None
    if ckpt_path == "last":
        found = sorted(task_dir.glob("runs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError("ckpt_path", f"'last' but no {task_dir}/runs/*/checkpoints/last.ckpt exists; pass a path instead")
        return str(found[-1])
    if not Path(ckpt_path).is_file():
        raise ConfigError("ckpt_path", f"checkpoint file {ckpt_path} does not exist")
    return str(ckpt_path)


def train(cfg: DictConfig) -> dict:
    """Fit the configured system; returns (and writes, rank 0) a summary with paths and metrics."""
    validate_train(cfg)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, Path(cfg.paths.log_dir) / cfg.task_name)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        datamodule.prepare_data()  # fails here, before any training, when data is missing
    system = build(cfg.model)
    system.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks, loggers = build_callbacks(cfg.get("callbacks")), build_loggers(cfg.get("logger"))
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(system.run_config)

    if ckpt_path:
        rank_zero_info(f"[mixlab] resuming from {ckpt_path}")
    trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    summary = {
        "run_dir": str(output_dir),
        "last_ckpt": getattr(trainer.checkpoint_callback, "last_model_path", None) or _existing(output_dir / "checkpoints" / "last.ckpt"),
        "best_ckpt": getattr(trainer.checkpoint_callback, "best_model_path", None),
        "sample_grid": next((str(cb.last_path) for cb in callbacks if getattr(cb, "last_path", None)), None),
        "global_step": trainer.global_step,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
    }
    test_metrics = None
    if cfg.get("test_after_fit") and hasattr(datamodule, "test_dataloader"):
        # the test split, touched once at the end, with the checkpoint selected on validation
        results = trainer.test(system, datamodule=datamodule, ckpt_path=summary["best_ckpt"] or None, verbose=False)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if test_metrics is not None:
        summary["test_metrics"] = test_metrics
    _write_summary(output_dir, summary)
    return summary


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


@rank_zero_only
def _write_summary(output_dir: Path, summary: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[mixlab] run dir:     {summary['run_dir']}")
    print(f"[mixlab] checkpoint:  {summary['last_ckpt']} (best: {summary['best_ckpt']})")
    if summary["sample_grid"]:
        print(f"[mixlab] sample grid: {summary['sample_grid']}")
    print(f"[mixlab] metrics:     {json.dumps({k: round(v, 5) for k, v in summary['metrics'].items()})}")
