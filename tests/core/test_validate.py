"""The validation layer: a constructor states its argument types and bounds once (`@checked`),
`build` names the full key path, and command-line overrides are checked from Hydra's and
OmegaConf's exception attributes."""

from typing import Literal

import pytest
from omegaconf import OmegaConf

from mixlab.core.cli import check_overrides
from mixlab.core.config import build, check_optimizer_numbers, check_trainer
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.validate import PositiveFloat, PositiveInt, checked


class Inner:
    @checked
    def __init__(self, steps: PositiveInt = 1, rate: PositiveFloat = 0.5, mode: Literal["a", "b"] = "a"):
        if mode == "b" and steps > 10:
            raise ArgumentError("steps", "must be <= 10 with mode b")
        self.steps, self.rate, self.mode = steps, rate, mode


class Outer:
    @checked
    def __init__(self, inner: Inner, sizes: list[PositiveInt] = [1]):  # noqa: B006 (never mutated)
        self.inner, self.sizes = inner, sizes


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"steps": 0}, "steps: must be >= 1, got 0"),
        ({"steps": True}, "steps: must be an integer, got True"),
        ({"steps": 2.0}, "steps: must be an integer, got 2.0"),
        ({"rate": "0.5"}, "rate: must be a number, got '0.5'"),
        ({"rate": float("nan")}, "rate: must be a finite number, got nan"),
        ({"mode": "c"}, "mode: must be 'a' or 'b', got 'c'"),
        ({"stepz": 3}, "stepz: not an argument (a typo?)"),
        ({"steps": 11, "mode": "b"}, "steps: must be <= 10 with mode b"),
    ],
)
def test_checked_names_the_argument(kwargs, message):
    with pytest.raises(ArgumentError) as err:
        Inner(**kwargs)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError)  # as a Python caller would expect


def test_checked_accepts_good_values_and_plain_containers():
    inner = Inner(steps=3, rate=1)  # an int where a float is expected is fine
    assert (inner.steps, inner.rate) == (3, 1.0)
    outer = Outer(inner, sizes=OmegaConf.create([2, 3]))  # OmegaConf lists arrive as plain lists
    assert outer.sizes == [2, 3] and type(outer.sizes) is list


def test_build_names_the_full_key_path():
    cfg = OmegaConf.create(
        {
            "model": {"_target_": f"{__name__}.Outer", "sizes": [1], "inner": {"_target_": f"{__name__}.Inner", "steps": "${n}"}},
            "n": 0,
        }
    )
    with pytest.raises(ConfigError) as err:
        build(cfg.model)
    assert str(err.value) == "model.inner.steps: must be >= 1, got 0"
    cfg.n = 4
    assert build(cfg.model).inner.steps == 4
    cfg.model.sizes = [1, -2]
    with pytest.raises(ConfigError, match=r"^model\.sizes\[1\]: must be >= 1, got -2$"):
        build(cfg.model)


def test_a_partial_node_names_its_key_when_called():
    cfg = OmegaConf.create({"model": {"inner": {"_target_": f"{__name__}.Inner", "_partial_": True, "rate": 2.0}}})
    make = build(cfg.model.inner)
    assert make(steps=2).steps == 2
    with pytest.raises(ConfigError, match=r"^model\.inner\.steps: must be >= 1, got -1$"):
        make(steps=-1)


@pytest.mark.parametrize(
    "trainer,message",
    [
        ({"max_epochs": 0}, "trainer.max_epochs: must be -1 or >= 1, got 0"),
        ({"max_steps": "abc"}, "trainer.max_steps: must be -1 or an integer, got 'abc'"),
        ({"gradient_clip_val": -1.0}, "trainer.gradient_clip_val: must be >= 0, got -1.0"),
    ],
)
def test_trainer_numbers(trainer, message):
    with pytest.raises(ConfigError) as err:
        check_trainer(OmegaConf.create(trainer))
    assert str(err.value) == message


def test_optimizer_numbers():
    check_optimizer_numbers(OmegaConf.create({"optimizer": {"_target_": "torch.optim.Adam", "lr": 1e-3, "betas": [0.9, 0.99]}}))
    with pytest.raises(ConfigError, match=r"^model\.optimizer\.betas: must be < 1, got 1\.0$"):
        check_optimizer_numbers(OmegaConf.create({"optimizer": {"_target_": "torch.optim.Adam", "betas": [0.9, 1.0]}}))


@pytest.mark.parametrize(
    "overrides,start",
    [
        (["model.no_such_key=1"], "model.no_such_key: not a key of the config"),
        (["experiment=nope"], "experiment: unknown option 'nope'"),
        (["trainer=nope"], "trainer: unknown option 'nope' (conf/trainer/nope.yaml does not exist); available: ddp ddp_cpu"),
        (["+trainer.max_epochs=3"], "trainer.max_epochs: already in the config: drop the '+'"),
        (["trainer.max_epochs=[1,2"], "trainer.max_epochs: cannot parse the value"),
        (["task_name=Hello, world"], "task_name: Hydra reads a comma-separated value as a sweep; quote the text"),
    ],
)
def test_bad_overrides_name_the_key(overrides, start):
    with pytest.raises(ConfigError) as err:
        check_overrides("train", overrides)
    assert str(err.value).startswith(start), str(err.value)


def test_good_overrides_pass():
    check_overrides("train", ["experiment=mcl_k4", "trainer.max_epochs=2", "+extra_key=1", 'task_name="Hello, world"'])


def test_a_run_dir_on_a_read_only_file_system_is_one_line(monkeypatch, tmp_path):
    import os
    import types

    from mixlab.core import cli

    cli.check_writable(tmp_path / "logs" / "run", "paths.log_dir")  # creatable: fine
    monkeypatch.setattr(cli.os, "statvfs", lambda path: types.SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(ConfigError, match=r"^paths\.log_dir: cannot write the run dir .*read-only file system"):
        cli.check_writable(tmp_path / "logs" / "run", "paths.log_dir")
    with pytest.raises(ConfigError, match=r"^hydra\.run\.dir: cannot write"):
        check_overrides("train", [], run_dir=str(tmp_path / "x"))
