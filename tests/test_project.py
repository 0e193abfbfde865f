"""Project hygiene: environment.yml and pyproject agree; every config composes."""

import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted


@pytest.mark.parametrize("group", ["data", "trainer", "logger"])
def test_every_group_option_composes(make_cfg, group):
    options = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    assert options
    for option in options:
        cfg = make_cfg(f"{group}={option}", "debug=smoke")
        assert cfg[group] is not None


def test_eval_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval.yaml", overrides=["ckpt=x.ckpt"])
    assert cfg.solver in ("euler", "heun") and cfg.n == 2048
