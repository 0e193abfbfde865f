"""The pipeline end to end on the baseline: exact resume, auto-resume, errors before training."""

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from mixlab.core.errors import ConfigError
from mixlab.core.pipeline import train
from mixlab.core.system import NonFiniteLossError
from mixlab.data.sources import DataNotFoundError


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


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.sampler.solver=rk45", "model.sampler.solver"),
        ("callbacks.sample_grid.steps=-3", "callbacks.sample_grid.steps"),
        ("model.precond=vp", "model.precond"),
        ("model.sigma_min=100", "model.sigma_min"),
        ("data.batch_size=15", "data.batch_size"),
        ("trainer.devices=0", "trainer.devices"),
        ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path"),
    ],
)
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
    cfg = make_cfg(
        "experiment=baseline",
        "debug=smoke",
        "trainer.max_epochs=3",
        "+model.loss.after=5",
        "model.loss._target_=support.NaNAfterLoss",
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at global step 4 \(epoch 1\)"):
        train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.optimizer.lr=-1", "model.optimizer.lr"),
        ("model.optimizer.lr=0", "model.optimizer.lr"),
        ("+model.optimizer.betas=[0.9,1.0]", "model.optimizer.betas"),
        ("+model.optimizer.weight_decay=-0.1", "model.optimizer.weight_decay"),
        ("+model.optimizer.eps=0", "model.optimizer.eps"),
        ("model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:0}", "model.scheduler.step_size"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("trainer.num_nodes=0", "trainer.num_nodes"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val"),
    ],
)
def test_optimizer_and_trainer_numbers_are_checked_before_training(make_cfg, override, key):
    cfg = make_cfg("experiment=baseline", "debug=smoke", override)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(f"{key}:")
    assert not Path(cfg.paths.output_dir, "checkpoints").exists()


def test_a_value_left_missing_names_its_key(make_cfg):
    cfg = make_cfg("experiment=baseline", "debug=smoke", "model.sigma_data=???")
    with pytest.raises(ConfigError, match=r"^model.sigma_data: must be given on the command line"):
        train(cfg)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_auto_resume_skips_a_truncated_last_ckpt(make_cfg, recwarn):
    first = train(make_cfg("experiment=baseline", "debug=smoke", "trainer.max_epochs=1", out="run"))
    last = Path(first["last_ckpt"])
    _truncate(last)
    again = train(make_cfg("experiment=baseline", "debug=smoke", "trainer.max_epochs=2", out="run"))
    skipped = [str(w.message) for w in recwarn if "skipped unreadable checkpoint" in str(w.message)]
    assert skipped and str(last) in skipped[0] and "best_epoch000.ckpt" in skipped[0]  # names both files
    assert again["global_step"] == 2 * first["global_step"]  # resumed from the intact best_epoch000.ckpt
    assert torch.load(last, weights_only=False)["global_step"] == again["global_step"]  # and wrote a good last.ckpt


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_an_unreadable_checkpoint_is_one_line_naming_file_and_key(make_cfg, tmp_path, content):
    bad = tmp_path / "bad.ckpt"
    if content is None:  # a real checkpoint, truncated
        summary = train(make_cfg("experiment=baseline", "debug=smoke", "trainer.max_epochs=1", out="src"))
        bad.write_bytes(Path(summary["last_ckpt"]).read_bytes()[:5000])
    else:
        bad.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        train(make_cfg("experiment=baseline", "debug=smoke", f"ckpt_path={bad}", out="resume"))
    message = str(err.value)
    assert message.startswith(f"ckpt_path: cannot read checkpoint {bad}") and "\n" not in message


def _without_data(cfg, target: str | None = None):
    """What an experiment with `override /data: null` composes to (a CLI `~data` cannot be
    combined with the debug_data defaults entry)."""
    with open_dict(cfg):
        del cfg["data"]
        if target:
            cfg.model._target_ = target
            cfg.callbacks.sample_grid = None
    return cfg


def test_data_free_system_trains_from_its_own_loader(make_cfg):
    summary = train(_without_data(make_cfg("experiment=baseline", "debug=smoke"), "support.DataFreeScoreDiffusion"))
    assert summary["global_step"] == 2 * 4 and Path(summary["last_ckpt"]).is_file()
    bad = _without_data(
        make_cfg("experiment=baseline", "debug=smoke", "trainer=ddp_cpu", "trainer.devices=3", out="bad"),
        "support.DataFreeScoreDiffusion",
    )
    with pytest.raises(ConfigError, match="^model.batch_size: global batch size 16 is not divisible by 3"):
        train(bad)


def test_a_system_that_needs_data_says_so(make_cfg):
    with pytest.raises(ConfigError, match="^data: ScoreDiffusion trains on a data set"):
        train(_without_data(make_cfg("experiment=baseline", "debug=smoke")))


def test_the_global_batch_splits_over_devices_and_accumulation(make_cfg):
    """data.batch_size is what one optimizer step sees: 2 accumulation steps of 8 reach the
    weights of one step of 16 (SGD, no dropout; same data, and the noise of each sample)."""
    exact = [
        "experiment=baseline",
        "debug=smoke",
        "model.net.dropout=0.0",
        "model.optimizer._target_=torch.optim.SGD",
        "model.optimizer.lr=0.05",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=8",
    ]
    one = train(make_cfg(*exact, "trainer.limit_train_batches=4", out="one"))
    two = train(make_cfg(*exact, "trainer.accumulate_grad_batches=2", out="two"))
    assert one["global_step"] == two["global_step"] == 4
    w1 = torch.load(one["last_ckpt"], weights_only=False)["current_model_state"]
    w2 = torch.load(two["last_ckpt"], weights_only=False)["current_model_state"]
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-5, rtol=1e-4)
    with pytest.raises(
        ConfigError, match=r"^data.batch_size: global batch size 16 is not divisible by 1 devices .* x 3 accumulation"
    ):
        train(make_cfg(*exact, "trainer.accumulate_grad_batches=3", out="three"))
