"""Every experiment in conf/experiment: composes with its real settings, instantiates (system,
data, callbacks, loggers, trainer), and trains under debug=smoke. No experiment is named here:
prerequisite runs are declared by the method's test folder (tests/<method>/experiments.yaml)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict
from support import EXPERIMENTS, prerequisites

from mixlab.core.config import build
from mixlab.core.pipeline import build_callbacks, build_loggers, check_run_config
from mixlab.core.system import MixlabSystem
from mixlab.data.base import GlobalBatchDataModule


def test_experiments_and_prerequisites_are_declared():
    assert len(EXPERIMENTS) >= 10 and {"baseline", "demo"} <= set(EXPERIMENTS)
    for experiment, needs in prerequisites().items():
        for spec in (s for v in needs.values() for s in (v if isinstance(v, list) else [v])):
            assert spec["experiment"] in EXPERIMENTS and spec.get("ckpt", "last") in ("last", "best"), experiment


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(smoke_runs, experiment, tmp_path):
    """The full-size config (not smoke) passes every check and every part builds."""
    cfg = smoke_runs.compose(experiment, "logger=csv", smoke=False, out=tmp_path / "run")
    assert cfg.task_name == experiment
    system_cls, world = check_run_config(cfg)
    assert world == 1 and issubclass(system_cls, MixlabSystem)
    system = build(cfg.model)
    assert type(system) is system_cls and sum(p.numel() for p in system.parameters()) > 0
    if system_cls.needs_data:
        datamodule = build(cfg.data)
        assert isinstance(datamodule, GlobalBatchDataModule) and datamodule.batch_size == cfg.data.batch_size
    else:
        assert cfg.get("data") is None
    callbacks = build_callbacks(cfg.callbacks)
    names = {type(cb).__name__ for cb in callbacks}
    assert {"ModelCheckpoint", "MetricHistory"} <= names
    with open_dict(cfg):
        cfg.trainer.default_root_dir = str(tmp_path)
    trainer = build(cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg.logger))
    assert isinstance(trainer, L.Trainer) and trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_under_smoke(smoke_runs, experiment):
    summary = smoke_runs.run(experiment)
    cfg = smoke_runs.compose(experiment)
    assert Path(summary["last_ckpt"]).is_file() and Path(summary["best_ckpt"]).is_file()
    assert (Path(summary["run_dir"]) / "summary.json").is_file()
    assert summary["global_step"] == cfg.trainer.max_epochs * cfg.trainer.limit_train_batches
    monitored = cfg.callbacks.model_checkpoint.monitor
    assert torch.isfinite(torch.tensor(summary["metrics"][monitored]))
    ckpt = torch.load(summary["last_ckpt"], weights_only=False)
    assert ckpt["mixlab_config"]["task_name"] == experiment and ckpt["global_step"] == summary["global_step"]
    assert ("current_model_state" in ckpt) == ("ema" in (cfg.callbacks or {}) and cfg.callbacks.ema is not None)
    if cfg.get("test_after_fit"):
        assert summary["test_metrics"]
