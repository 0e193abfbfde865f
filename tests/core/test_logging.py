"""wandb by default, offline when there is no key/network; CSV works; slash metric names."""

import csv
from pathlib import Path

import pytest

from mixlab.core.pipeline import train, wandb_offline


def test_wandb_goes_offline_without_a_key(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not wandb_offline()  # an explicit WANDB_MODE is respected


@pytest.mark.slow
def test_default_wandb_logger_runs_offline(make_cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    summary = train(make_cfg("experiment=baseline", "debug=smoke", "logger=wandb"))
    runs = list(Path(summary["run_dir"], "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_csv_logger_has_slash_metric_names(make_cfg):
    summary = train(make_cfg("experiment=baseline", "debug=smoke"))  # smoke uses the CSV logger
    with open(Path(summary["run_dir"], "csv", "version_0", "metrics.csv")) as f:
        columns = next(csv.reader(f))
    assert {"train/loss_step", "train/loss_epoch", "val/loss"} <= set(columns)
