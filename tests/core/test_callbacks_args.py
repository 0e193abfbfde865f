"""The callbacks' arguments: a bad one names itself, and the full key when built from a config."""

import pytest
from omegaconf import OmegaConf

from mixlab.callbacks.annealing import TemperatureAnnealing
from mixlab.callbacks.history import MetricHistory
from mixlab.callbacks.sampling import SampleGrid
from mixlab.callbacks.usage import ExpertUsage
from mixlab.core.config import build
from mixlab.core.errors import ArgumentError, ConfigError


@pytest.mark.parametrize(
    "make,arg",
    [
        (lambda: TemperatureAnnealing(start=10.0, end=0.0), "start"),  # exponential needs both ends > 0
        (lambda: TemperatureAnnealing(start=1.0, end=0.1, schedule="step"), "schedule"),
        (lambda: TemperatureAnnealing(start=1.0, end=0.1, interval="batch"), "interval"),
        (lambda: TemperatureAnnealing(start=1.0, end=0.1, total=0), "total"),
        (lambda: TemperatureAnnealing(start=True, end=0.1), "start"),
        (lambda: ExpertUsage(dead_threshold=1.5), "dead_threshold"),
        (lambda: ExpertUsage(plot_every_n_epochs=-1), "plot_every_n_epochs"),
        (lambda: SampleGrid(every_n_steps=0), "every_n_steps"),
        (lambda: SampleGrid(num_samples=0), "num_samples"),
        (lambda: MetricHistory(prefixes="train/"), "prefixes"),
    ],
)
def test_a_bad_argument_names_itself(make, arg):
    with pytest.raises(ArgumentError, match=f"^{arg}: "):
        make()


def test_a_callback_built_from_a_config_names_the_full_key():
    cfg = OmegaConf.create(
        {
            "callbacks": {
                "temperature": {
                    "_target_": "mixlab.callbacks.annealing.TemperatureAnnealing",
                    "start": 10.0,
                    "end": 0.01,
                    "interval": "batch",
                }
            }
        }
    )
    with pytest.raises(ConfigError, match="^callbacks.temperature.interval: must be 'epoch' or 'step', got 'batch'"):
        build(cfg.callbacks.temperature)
    assert TemperatureAnnealing(start=0.0, end=1.0, schedule="linear").value == 0.0  # linear may start at 0
