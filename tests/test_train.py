"""End to end through the pipeline: every experiment under debug=smoke, resume, errors."""

from pathlib import Path

import pytest
import torch

from mixlab.data.sources import DataNotFoundError
from mixlab.core.errors import ConfigError
from mixlab.core.pipeline import train
from mixlab.core.system import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
# image-classifier experiments (pretrain_task_*, moe_task_*) run under debug=smoke in test_moe_train.py,
# where the MoE is initialised from the smoke sub-models it trains first
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml") if "_task_" not in p.stem)


def test_experiments_exist():
    assert {"baseline", "baseline_edm", "demo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_seed_settings(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}")
    assert cfg.task_name == experiment and cfg.model._target_.startswith("mixlab.")
    if experiment == "baseline":  # the seed's recipe, exactly
        net = cfg.model.net
        assert (net.base_ch, list(net.ch_mult), net.num_res_blocks, net.time_dim, net.dropout) == (32, [1, 2], 2, 128, 0.05)
        assert (cfg.model.sigma_min, cfg.model.sigma_max, cfg.model.optimizer.lr) == (0.01, 80.0, 3e-4)
        assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.callbacks.ema.decay) == (256, 200, 0.999)
        assert cfg.model.loss._target_.endswith("EpsilonLoss") and cfg.model.sigma_sampler._target_.endswith("LogUniformSigma")


# Experiments that start from another run's checkpoint: (prerequisite experiment, config key).
NEEDS_CHECKPOINT = {"mcl_k4_gate": ("mcl_k4", "model.experts_ckpt")}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_under_smoke(make_cfg, experiment):
    extra = []
    if experiment in NEEDS_CHECKPOINT:
        prerequisite, key = NEEDS_CHECKPOINT[experiment]
        extra = [f"{key}={train(make_cfg(f'experiment={prerequisite}', 'debug=smoke', out='pre'))['last_ckpt']}"]
    cfg = make_cfg(f"experiment={experiment}", "debug=smoke", *extra)
    summary = train(cfg)
    assert Path(summary["last_ckpt"]).is_file() and Path(summary["best_ckpt"]).is_file()
    if "_target_" in (cfg.callbacks.get("sample_grid") or {}):  # (smoke's overrides alone do not enable it)
        assert Path(summary["sample_grid"]).is_file()
    assert summary["global_step"] == cfg.trainer.max_epochs * (cfg.data.train_limit // cfg.data.batch_size)
    assert torch.isfinite(torch.tensor(summary["metrics"]["val/loss"]))
    assert (Path(summary["run_dir"]) / "summary.json").is_file()
    ckpt = torch.load(summary["last_ckpt"], weights_only=False)
    assert ckpt["mixlab_config"]["task_name"] == experiment
    assert ("current_model_state" in ckpt) == ("_target_" in (cfg.callbacks.get("ema") or {}))  # raw weights kept beside the EMA


def _weights(ckpt_path):
    ckpt = torch.load(ckpt_path, weights_only=False)
    return ckpt, ckpt["state_dict"], ckpt["current_model_state"]


def test_resume_equals_uninterrupted_run(make_cfg):
    common = ["experiment=baseline", "debug=smoke", "model.net.dropout=0.1"]
    straight = train(make_cfg(*common, "trainer.max_epochs=2", out="straight"))
    first = train(make_cfg(*common, "trainer.max_epochs=1", out="part1"))
    resumed = train(make_cfg(*common, "trainer.max_epochs=2", f"ckpt_path={first['last_ckpt']}", out="part2"))
    a, a_ema, a_raw = _weights(straight["last_ckpt"])
    b, b_ema, b_raw = _weights(resumed["last_ckpt"])
    assert a["global_step"] == b["global_step"] == straight["global_step"] and a["epoch"] == b["epoch"]
    for key in a_raw:  # raw weights, EMA weights and optimizer moments all continue exactly
        torch.testing.assert_close(a_raw[key], b_raw[key])
        torch.testing.assert_close(a_ema[key], b_ema[key])
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_auto_resume_from_run_dir_and_ckpt_last(make_cfg):
    first = train(make_cfg("experiment=baseline", "debug=smoke", "trainer.max_epochs=1", out="run"))
    # same run dir again (e.g. relaunch with hydra.run.dir=<dir>): continues from its last.ckpt
    again = train(make_cfg("experiment=baseline", "debug=smoke", "trainer.max_epochs=2", out="run"))
    assert again["global_step"] == 2 * first["global_step"]
    cfg = make_cfg("experiment=baseline", "debug=smoke", "trainer.max_epochs=3", "ckpt_path=last", out="other")
    cfg.paths.log_dir = str(Path(first["run_dir"]).parent.parent)  # logs/ containing baseline/runs/*
    Path(cfg.paths.log_dir, "baseline", "runs").mkdir(parents=True, exist_ok=True)
    Path(first["run_dir"]).rename(Path(cfg.paths.log_dir, "baseline", "runs", "r1"))
    third = train(cfg)
    assert third["global_step"] == 3 * first["global_step"]


@pytest.mark.parametrize("override,key", [
    ("model.sampler.solver=rk45", "model.sampler.solver"),
    ("callbacks.sample_grid.steps=-3", "callbacks.sample_grid.steps"),
    ("model.precond=vp", "model.precond"),
    ("model.sigma_min=100", "model.sigma_min"),
    ("data.batch_size=15", "data.batch_size"),
    ("trainer.devices=0", "trainer.devices"),
    ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path"),
])
def test_bad_config_fails_before_training_naming_the_key(make_cfg, override, key):
    overrides = ["experiment=baseline", "debug=smoke", override]
    if key == "data.batch_size":
        overrides += ["trainer=ddp_cpu", "trainer.devices=2"]
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(key)
    assert not Path(cfg.paths.output_dir, "checkpoints").exists()


def test_missing_data_names_the_fix(make_cfg, tmp_path):
    cfg = make_cfg("experiment=baseline", "debug=smoke", "data.download=false")
    cfg.paths.data_dir = cfg.data.root = str(tmp_path / "empty")
    with pytest.raises(DataNotFoundError, match="make data"):
        train(cfg)


def test_nan_loss_stops_without_writing_a_bad_checkpoint(make_cfg):
    # 4 train + 2 val loss calls per epoch; NaN from the 6th call on: epoch 0 is trained,
    # validated and saved, and the first step of epoch 1 (global step 4) is non-finite
    cfg = make_cfg("experiment=baseline", "debug=smoke", "trainer.max_epochs=3",
                   "+model.loss.after=5", "model.loss._target_=conftest.NaNAfterLoss")
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at global step 4 \(epoch 1\)"):
        train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
