"""Instantiate system / datamodule / callbacks / loggers / trainer from a config and fit.

Method-free: a system is whatever `model._target_` names; it checks its own configuration
(`check_config`), may need no data set (`needs_data = False`, its own train_dataloader), and
owns the batch sizes it defines (`check_batch_split`)."""

import json
import os
from netrc import netrc
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mixlab.callbacks.history import MetricHistory
from mixlab.core.checkpoint import check_resume_fits, check_state_fits, resolve_resume, system_class
from mixlab.core.checkpoint_io import AtomicCheckpointIO, write_json_atomic
from mixlab.core.config import build, check_missing, check_optimizer_numbers, check_trainer, require
from mixlab.core.distributed import DestroyProcessGroupAtExit, accumulation, local_rank, world_size
from mixlab.core.errors import ConfigError
from mixlab.core.network import internet_reachable
from mixlab.core.quiet import quiet_lightning
from mixlab.core.signals import SIGTERMException, StopOnSignal


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
            rank_zero_info(
                f"[mixlab] logger.{name}: wandb in offline mode (no API key or no network); `wandb sync` the run dir later"
            )
            node = OmegaConf.merge(node, {"offline": True})
        try:
            loggers.append(build(node))
        except InstantiationException as err:
            if isinstance(err.__cause__, ModuleNotFoundError):  # e.g. tensorboard is an optional extra
                raise ConfigError(
                    f"logger.{name}",
                    f"{str(err.__cause__).splitlines()[0]} (make setup installs the optional extras; or choose another logger=)",
                ) from None
            raise
    return loggers


def build_callbacks(cfg: DictConfig | None) -> list[L.Callback]:
    callbacks = [build(node) for node in (cfg or {}).values() if node is not None and "_target_" in node]
    callbacks.append(DestroyProcessGroupAtExit())
    # Weight averaging last: callbacks that sample during validation must see the EMA weights,
    # which it swaps back in its own on_validation_epoch_end (hooks run in list order). Metric
    # history just before it: it records what the others logged at the end of the epoch.
    return sorted(callbacks, key=lambda cb: (isinstance(cb, WeightAveraging), isinstance(cb, MetricHistory)))


def build_plugins(trainer_cfg: DictConfig) -> list:
    """`trainer.plugins` as given, plus the atomic, checksummed checkpoint IO unless one of them
    already is a CheckpointIO."""
    from lightning.fabric.plugins import CheckpointIO

    given = trainer_cfg.get("plugins")
    given = [] if given is None else list(given) if OmegaConf.is_list(given) or isinstance(given, list) else [given]
    plugins = [
        build(p, key=f"trainer.plugins.{i}") if OmegaConf.is_dict(p) and "_target_" in p else p for i, p in enumerate(given)
    ]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def check_run_config(cfg: DictConfig):
    """Everything that can be checked before data or training: trainer and optimizer numbers,
    values left `???`, and the system's own checks. Returns (system class, world size)."""
    require(
        cfg.get("model") is not None and "_target_" in cfg.model,
        "model",
        "missing from the config (choose one: model=NAME or experiment=NAME)",
    )
    require(cfg.get("trainer") is not None, "trainer", "missing from the config")
    system_cls = system_class(cfg.model._target_)
    system_cls.check_config(cfg)
    check_missing(cfg.model)
    if cfg.get("data") is not None:
        check_missing(cfg.data)
    elif system_cls.needs_data:
        raise ConfigError("data", f"{system_cls.__name__} trains on a data set: choose one (data=NAME)")
    check_trainer(cfg.trainer)
    check_optimizer_numbers(cfg.model)
    return system_cls, world_size(cfg.trainer)


def train(cfg: DictConfig) -> dict:
    """Fit the configured system; returns (and writes, rank 0) a summary with paths and metrics."""
    quiet_lightning()
    _, world = check_run_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_resume(cfg.get("ckpt_path"), output_dir, Path(cfg.paths.log_dir) / cfg.task_name)
    check_resume_fits(ckpt_path, cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    system = build(cfg.model)
    check_state_fits(ckpt_path, system)
    accumulate = accumulation(cfg.trainer)
    system.check_batch_split(world, accumulate)
    datamodule = build(cfg.data) if cfg.get("data") is not None else None
    if datamodule is not None:
        datamodule.check_batch_split(world, accumulate)
        if local_rank() == 0:  # one process per node may download; under srun every task runs this
            datamodule.prepare_data()  # fails here, before any training, when data is missing
    system.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks, loggers = build_callbacks(cfg.get("callbacks")), build_loggers(cfg.get("logger"))
    stop = StopOnSignal(output_dir / "checkpoints")
    trainer: L.Trainer = build(
        cfg.trainer, callbacks=[stop, *callbacks], logger=loggers or False, plugins=build_plugins(cfg.trainer)
    )
    for logger in loggers:
        logger.log_hyperparams(system.run_config)

    if ckpt_path:
        rank_zero_info(f"[mixlab] resuming from {ckpt_path}")
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # SIGTERM or SIGINT: Lightning stopped between two batches
        raise stop.interrupted(trainer.global_step, trainer.current_epoch) from None
    summary = {
        "run_dir": str(output_dir),
        "last_ckpt": _existing(output_dir / "checkpoints" / "last.ckpt"),
        "best_ckpt": getattr(trainer.checkpoint_callback, "best_model_path", None) or None,
        "sample_grid": next((str(cb.last_path) for cb in callbacks if getattr(cb, "last_path", None)), None),
        "global_step": trainer.global_step,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
    }
    if cfg.get("test_after_fit"):
        # the test split, touched once at the end, with the checkpoint selected on validation
        results = trainer.test(system, datamodule=datamodule, ckpt_path=summary["best_ckpt"] or None, verbose=False)
        summary["test_metrics"] = {k: float(v) for k, v in (results[0] if results else {}).items()}
    _write_summary(output_dir, summary)
    return summary


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


@rank_zero_only
def _write_summary(output_dir: Path, summary: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "summary.json", summary)
    print(f"[mixlab] run dir:     {summary['run_dir']}")
    print(f"[mixlab] checkpoint:  {summary['last_ckpt']} (best: {summary['best_ckpt']})")
    if summary["sample_grid"]:
        print(f"[mixlab] sample grid: {summary['sample_grid']}")
    print(f"[mixlab] metrics:     {json.dumps({k: round(v, 5) for k, v in summary['metrics'].items()})}")
