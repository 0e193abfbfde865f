"""Project hygiene: environment.yml and pyproject agree; every group option composes and builds;
the core knows no method; the layout keeps the package root empty."""

import subprocess

import lightning as L
import pytest
import tomllib
import yaml
from support import ROOT, compose_eval

from mixlab.core.config import build
from mixlab.core.pipeline import build_loggers
from mixlab.data.base import GlobalBatchDataModule


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("option", _options("data"))
def test_every_data_option_builds_a_global_batch_datamodule(make_cfg, option):
    cfg = make_cfg(f"data={option}", "debug=smoke")
    datamodule = build(cfg.data)
    assert isinstance(datamodule, GlobalBatchDataModule) and datamodule.batch_size == cfg.data.batch_size


@pytest.mark.parametrize("option", _options("trainer"))
def test_every_trainer_option_builds(make_cfg, option, tmp_path):
    cfg = make_cfg(f"trainer={option}", "trainer.accelerator=cpu", "trainer.precision=32-true", "debug=smoke")
    trainer = build(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
    assert isinstance(trainer, L.Trainer) and trainer.max_epochs == 2
    assert trainer.world_size == (cfg.trainer.devices if option in ("ddp", "ddp_cpu") else 1) * cfg.trainer.num_nodes


@pytest.mark.parametrize("option", _options("logger"))
def test_every_logger_option_builds(make_cfg, option):
    cfg = make_cfg(f"logger={option}")
    loggers = build_loggers(cfg.logger)
    assert len(loggers) == 1 and type(loggers[0]).__name__.lower().startswith(option)


@pytest.mark.parametrize("evaluator", _options("evaluator"))
def test_every_evaluator_names_a_function(data_dir, evaluator):
    from hydra.utils import get_method

    cfg = compose_eval("ckpt=x.ckpt", f"evaluator={evaluator}", data_dir=data_dir)
    assert callable(get_method(cfg.run)) and cfg.ckpt == "x.ckpt"


def test_the_core_knows_no_method():
    out = subprocess.run(
        ["git", "grep", "-n", "-i", r"num_experts\|sigma_min\|experts_ckpt\|mcl\|moe\|score\.", "--", "mixlab/core"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.stdout == "", out.stdout
    assert sorted(p.name for p in (ROOT / "mixlab").glob("*.py")) == ["__init__.py"]
