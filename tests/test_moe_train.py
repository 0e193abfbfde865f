"""MoE / per-subset experiments end to end on the offline stand-in (tiny MNIST + Fashion-MNIST
written here): every pretrain_* / moe_* experiment under debug=smoke (the MoE initialised
from smoke sub-model checkpoints), DDP ddp_spawn with 2 CPU processes, and eval-moe."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_train
from mixlab.core.errors import ConfigError
from mixlab.core.pipeline import train

ROOT = Path(__file__).resolve().parents[1]
MOE_EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml") if "_task_" in p.stem)


def write_tiny_standin(root: Path, per_class: int = 48, seed: int = 0) -> Path:
    """MNIST and Fashion-MNIST IDX files with `per_class` blob images per class and split."""
    from mixlab.data.sources import write_idx

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    for name in ("MNIST", "FashionMNIST"):
        raw = root / name / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for split in ("train", "t10k"):
            labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
            cy, cx = 6 + 2 * (labels % 5), 6 + 8 * (labels // 5) + (name == "FashionMNIST") * 4
            img = 255 * np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 8)
            img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
            write_idx(raw / f"{split}-images-idx3-ubyte", img)
            write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def standin_data(tmp_path_factory) -> Path:
    return write_tiny_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture
def moe_cfg(standin_data, tmp_path):
    def _make(*overrides: str, out: str = "run"):
        return compose_train([*overrides, "debug=smoke"], standin_data, tmp_path / out)

    return _make


@pytest.fixture(scope="module")
def smoke_submodels(standin_data, tmp_path_factory) -> dict[str, list[str]]:
    """Best checkpoints of smoke sub-models: task A subsets 1..3, task B subset 2 (reused 3x)."""
    out = tmp_path_factory.mktemp("sub")
    ckpts = {"a": [], "b": []}
    for task, subsets in (("a", (1, 2, 3)), ("b", (2,))):
        for s in subsets:
            cfg = compose_train([f"experiment=pretrain_task_{task}", f"data.subset={s}", "debug=smoke", "trainer.max_epochs=1"],
                                standin_data, out / f"{task}{s}")
            summary = train(cfg)
            assert 0 <= summary["test_metrics"]["test/acc"] <= 1 and Path(summary["best_ckpt"]).is_file()
            ckpts[task].append(summary["best_ckpt"])
            ckpt = torch.load(summary["last_ckpt"], weights_only=False)
            assert ckpt["mixlab_config"]["task_name"] == f"pretrain_task_{task}"
            assert ckpt["state_dict"]["net.head.1.weight"].shape[0] == 5
    ckpts["b"] *= 3
    return ckpts


RUNS: dict[str, dict] = {}  # summaries of the smoke runs, reused by the eval-moe test


def test_moe_experiments_exist_with_reference_settings(moe_cfg):
    assert MOE_EXPERIMENTS == ["moe_task_a", "moe_task_b", "pretrain_task_a", "pretrain_task_b"]
    cfg = compose_train(["experiment=moe_task_a"], ROOT / "data", Path("/tmp/unused"))
    m, cb = cfg.model, cfg.callbacks
    assert (m.diversity_weight, m.balance_weight, m.net.num_experts, m.num_classes) == (0.1, 0.5, 3, 15)
    assert (m.optimizer.lr, m.optimizer.weight_decay, cfg.data.batch_size, cfg.trainer.max_epochs) == (1e-3, 1e-4, 32, 100)
    assert (cb.early_stopping.patience, cb.early_stopping.monitor, cb.model_checkpoint.monitor) == (20, "val/acc", "val/acc")
    assert (cb.temperature.start, cb.temperature.end, cb.temperature.schedule, cb.temperature.interval) == (2.0, 0.5, "cosine", "epoch")
    assert cb.ema is None and cfg.test_after_fit and cfg.data.source._target_.endswith("CIFAR100Source")
    b = compose_train(["experiment=moe_task_b"], ROOT / "data", Path("/tmp/unused"))
    assert b.model.num_classes == 12 and b.data.image_size == 64 and b.data.source._target_.endswith("ImageFolderSource")


def test_pretrain_experiments_run_under_smoke(smoke_submodels):
    # the fixture ran pretrain_task_a (subsets 1-3) and pretrain_task_b (subset 2) under debug=smoke
    assert len(smoke_submodels["a"]) == 3 and all(Path(p).is_file() for p in smoke_submodels["a"] + smoke_submodels["b"])


@pytest.mark.parametrize("experiment", [e for e in MOE_EXPERIMENTS if e.startswith("moe")])
def test_experiment_runs_under_smoke(moe_cfg, smoke_submodels, experiment):
    task = experiment[-1]
    overrides = [f"experiment={experiment}"]
    overrides.append(f"model.init_from=[{','.join(smoke_submodels[task])}]")
    cfg = moe_cfg(*overrides)
    summary = RUNS[experiment] = train(cfg)
    run = Path(summary["run_dir"])
    assert Path(summary["last_ckpt"]).is_file() and Path(summary["best_ckpt"]).is_file()
    assert np.isfinite(summary["metrics"]["val/acc"]) and "test/acc" in summary["test_metrics"]
    ckpt = torch.load(summary["last_ckpt"], weights_only=False)
    assert ckpt["mixlab_config"]["task_name"] == experiment
    assert float(ckpt["state_dict"]["net.gate.temperature"]) == pytest.approx(0.5)  # cosine end, in the ckpt
    names = cfg.data.subsets
    assert any(k.startswith(f"val/acc_class/{names[0][0]}") for k in summary["metrics"])
    for key in ("train/ce", "train/diversity", "train/balance", "usage/expert_0", "temperature", "val/gate/expert_0/" + names[0][0]):
        assert key in summary["metrics"], key
    figures = {p.name for p in (run / "figures").glob("*.png")}
    assert {"expert_analysis_epoch002.png", "expert_usage_training.png", "expert_analysis_test.png"} <= figures


def test_eval_moe_writes_table_and_figures(moe_cfg, smoke_submodels, tmp_path):
    from mixlab.moe.evaluate import evaluate_classifier

    summary = RUNS.get("moe_task_a") or train(moe_cfg("experiment=moe_task_a", out="m"))
    table = evaluate_classifier(summary["best_ckpt"], tmp_path / "eval")
    for name in ("accuracy.md", "accuracy.json", "confusion_matrix.png", "sample_predictions.png", "expert_analysis.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert table["n"] == 32 and len(table["per_class"]) == 15 and table["source"] == "DigitFashionStandIn"
    assert table["overall"] == pytest.approx(summary["test_metrics"]["test/acc"])  # same ckpt, same split, same T
    stored = float(torch.load(summary["best_ckpt"], weights_only=False)["state_dict"]["net.gate.temperature"])
    assert table["temperature"] == pytest.approx(stored)  # the checkpoint's T, not the constructor's 2.0 default
    assert json.loads((tmp_path / "eval" / "accuracy.json").read_text())["per_class"]["apple"]["n"] >= 0


@pytest.mark.parametrize("override,key", [
    ("data.subset=4", "data.subset"),
    ("data.subsets=[[apple,pear],[rose]]", "model.num_classes"),
    ("model.net.num_experts=0", "model.net.num_experts"),
    ("model.init_from=[a.ckpt]", "model.init_from"),
])
def test_bad_moe_config_names_the_key(moe_cfg, override, key):
    cfg = moe_cfg("experiment=moe_task_a", override)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(key)


@pytest.mark.slow
def test_moe_ddp_spawn_two_cpu_processes(moe_cfg):
    # test_after_fit=false: under ddp_spawn, Lightning's CSVLogger fails to rewrite its header when a
    # second spawned stage (trainer.test) logs new keys into the fit's metrics.csv (the `ddp` launcher is fine)
    cfg = moe_cfg("experiment=moe_task_a", "trainer=ddp_cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn",
                  "test_after_fit=false", out="ddp")
    summary = train(cfg)
    assert np.isfinite(summary["metrics"]["val/acc"]) and "test_metrics" not in summary
    ckpt = torch.load(summary["last_ckpt"], weights_only=False)
    assert ckpt["global_step"] == 2 * (64 // 16)  # global batch 16 = 2 x 8, 64 images, 2 epochs
    assert float(ckpt["state_dict"]["net.gate.temperature"]) == pytest.approx(0.5)
    assert (Path(summary["run_dir"]) / "figures" / "expert_usage_training.png").is_file()
