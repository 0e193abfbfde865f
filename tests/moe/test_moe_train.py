"""MoE / per-subset experiments on the offline stand-in (tiny MNIST + Fashion-MNIST written by the
tests): the smoke runs of every pretrain_* / moe_* experiment (the MoE initialised from smoke
sub-models, tests/moe/experiments.yaml), DDP ddp_spawn with 2 CPU processes, and the
`classifier` evaluator."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import ROOT, compose_eval, compose_train

from mixlab.core.errors import ConfigError
from mixlab.core.pipeline import train
from mixlab.moe.evaluate import evaluate


def test_experiments_have_the_reference_settings():
    cfg = compose_train(["experiment=moe_task_a"], ROOT / "data", Path("/tmp/unused"))
    m, cb = cfg.model, cfg.callbacks
    assert (m.diversity_weight, m.balance_weight, m.net.num_experts, m.num_classes) == (0.1, 0.5, 3, 15)
    assert (m.optimizer.lr, m.optimizer.weight_decay, cfg.data.batch_size, cfg.trainer.max_epochs) == (1e-3, 1e-4, 32, 100)
    assert (cb.early_stopping.patience, cb.early_stopping.monitor, cb.model_checkpoint.monitor) == (20, "val/acc", "val/acc")
    assert (cb.temperature.start, cb.temperature.end, cb.temperature.schedule, cb.temperature.interval) == (
        2.0,
        0.5,
        "cosine",
        "epoch",
    )
    assert (
        "ema" not in cb and "sample_grid" not in cb and cfg.test_after_fit and cfg.data.source._target_.endswith("CIFAR100Source")
    )
    b = compose_train(["experiment=moe_task_b"], ROOT / "data", Path("/tmp/unused"))
    assert b.model.num_classes == 12 and b.data.image_size == 64 and b.data.source._target_.endswith("ImageFolderSource")
    pre = compose_train(["experiment=pretrain_task_a"], ROOT / "data", Path("/tmp/unused"))
    assert pre.model.num_classes == 5 and pre.callbacks.early_stopping.patience == 20 and "temperature" not in pre.callbacks


@pytest.mark.parametrize("task", ["a", "b"])
def test_submodels_are_five_way_and_tested_once(smoke_runs, task):
    for subset in (1, 2, 3):
        summary = smoke_runs.run(f"pretrain_task_{task}", f"data.subset={subset}")
        assert 0 <= summary["test_metrics"]["test/acc"] <= 1
        ckpt = torch.load(summary["best_ckpt"], weights_only=False)
        assert ckpt["mixlab_config"]["data"]["subset"] == subset and ckpt["state_dict"]["net.head.1.weight"].shape[0] == 5


@pytest.mark.parametrize("experiment", ["moe_task_a", "moe_task_b"])
def test_moe_smoke_run_logs_gates_and_figures(smoke_runs, experiment):
    summary = smoke_runs.run(experiment)
    cfg = smoke_runs.compose(experiment)
    run = Path(summary["run_dir"])
    assert np.isfinite(summary["metrics"]["val/acc"]) and "test/acc" in summary["test_metrics"]
    ckpt = torch.load(summary["last_ckpt"], weights_only=False)
    assert float(ckpt["state_dict"]["net.gate.temperature"]) == pytest.approx(0.5)  # cosine end, in the ckpt
    first = cfg.data.subsets[0][0]
    assert any(k.startswith(f"val/acc_class/{first}") for k in summary["metrics"])
    for key in ("train/ce", "train/diversity", "train/balance", "usage/expert_0", "temperature", f"val/gate/expert_0/{first}"):
        assert key in summary["metrics"], key
    figures = {p.name for p in (run / "figures").glob("*.png")}
    assert {"expert_analysis_epoch002.png", "expert_usage_training.png", "expert_analysis_test.png"} <= figures


def test_the_moe_starts_from_the_submodels(smoke_runs):
    """Expert i holds sub-model i's expert weights before training (init_from, in order)."""
    from mixlab.core.config import build

    cfg = smoke_runs.compose("moe_task_a")
    system = build(cfg.model)
    system.setup("fit")
    for i, path in enumerate(system.init_from):
        sub = torch.load(path, weights_only=False)["state_dict"]
        torch.testing.assert_close(system.net.experts[i].state_dict()["depthwise.weight"], sub["net.expert.depthwise.weight"])


def test_init_from_takes_run_dirs(smoke_runs, data_dir, tmp_path):
    """A run dir stands for its validation-selected checkpoint, as for `ckpt=`."""
    from mixlab.core.config import build

    runs = [smoke_runs.run("pretrain_task_a", f"data.subset={subset}") for subset in (1, 2, 3)]
    cfg = compose_train(
        ["experiment=moe_task_a", "debug=smoke", f"model.init_from=[{','.join(r['run_dir'] for r in runs)}]"],
        data_dir,
        tmp_path / "run",
    )
    assert build(cfg.model).init_from == [str(Path(r["best_ckpt"])) for r in runs]


def test_classifier_evaluator_writes_table_and_figures(smoke_runs, data_dir, tmp_path):
    summary = smoke_runs.run("moe_task_a")
    table = evaluate(
        compose_eval(f"ckpt={summary['best_ckpt']}", "evaluator=classifier", data_dir=data_dir, out_dir=tmp_path / "eval")
    )
    for name in ("accuracy.md", "accuracy.json", "confusion_matrix.png", "sample_predictions.png", "expert_analysis.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert table["n"] == 32 and len(table["per_class"]) == 15 and table["source"] == "DigitFashionStandIn"
    assert table["overall"] == pytest.approx(summary["test_metrics"]["test/acc"])  # same ckpt, same split, same T
    stored = float(torch.load(summary["best_ckpt"], weights_only=False)["state_dict"]["net.gate.temperature"])
    assert table["temperature"] == pytest.approx(stored)  # the checkpoint's T, not the constructor's 2.0 default
    written = json.loads((tmp_path / "eval" / "accuracy.json").read_text())["per_class"]
    assert sum(row["n"] for row in written.values()) == 32  # every test image counted once, in its own class
    assert written["apple"]["n"] == table["per_class"]["apple"]["n"] and written["apple"]["n"] > 0


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.subset=4", "data.subset"),
        ("data.subsets=[[apple,pear],[rose]]", "model.num_classes"),
        ("model.net.num_experts=0", "model.net.num_experts"),
        ("model.init_from=[a.ckpt]", "model.init_from"),
        ("model.init_from=[a.ckpt,b.ckpt,c.ckpt]", "model.init_from"),
    ],
)
def test_bad_moe_config_names_the_key(data_dir, tmp_path, override, key):
    cfg = compose_train(["experiment=moe_task_a", "debug=smoke", override], data_dir, tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(key)


def test_an_unreadable_submodel_checkpoint_is_one_line(data_dir, tmp_path):
    bad = tmp_path / "sub.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    cfg = compose_train(
        ["experiment=moe_task_a", "debug=smoke", f"model.init_from=[{bad},{bad},{bad}]"], data_dir, tmp_path / "run"
    )
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(f"model.init_from: cannot read checkpoint {bad}") and "\n" not in str(err.value)


@pytest.mark.slow
def test_moe_ddp_spawn_two_cpu_processes(smoke_runs, tmp_path):
    # test_after_fit=false: under ddp_spawn, Lightning's CSVLogger fails to rewrite its header when a
    # second spawned stage (trainer.test) logs new keys into the fit's metrics.csv (the `ddp` launcher is fine)
    cfg = smoke_runs.compose(
        "moe_task_a",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        "test_after_fit=false",
        out=tmp_path / "ddp",
    )
    summary = train(cfg)
    assert np.isfinite(summary["metrics"]["val/acc"]) and "test_metrics" not in summary
    ckpt = torch.load(summary["last_ckpt"], weights_only=False)
    assert ckpt["global_step"] == 2 * 4  # 2 epochs x 4 batches of the global batch 16 = 2 x 8
    assert float(ckpt["state_dict"]["net.gate.temperature"]) == pytest.approx(0.5)
    assert (Path(summary["run_dir"]) / "figures" / "expert_usage_training.png").is_file()
