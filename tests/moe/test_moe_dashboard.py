"""What the MoE classifier sends to the loggers: a class with no sample in the evaluated split is
missing (no key, never 0.0), and the expert analysis, confusion matrix and usage figures reach
the image loggers (wandb-like `log_image`, TensorBoard), while the CSV logger keeps the files."""

import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from support import compose_train
from torch.utils.data import DataLoader, TensorDataset

from mixlab.callbacks.usage import ExpertUsage
from mixlab.core.config import build
from mixlab.moe.figures import plot_confusion, plot_expert_analysis


class RecordingLogger(Logger):
    """Stands in for wandb: records the scalars and the `log_image` calls."""

    def __init__(self):
        super().__init__()
        self.metrics: dict[str, float] = {}
        self.images: list[tuple[str, int, list]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.update(metrics)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs) -> None:
        self.images.append((key, step, list(images)))


def moe_and_data(data_dir: Path, run: Path):
    cfg = compose_train(
        ["experiment=moe_task_a", "debug=smoke", "model.init_from=null", "model.analysis_every_n_epochs=1"], data_dir, run
    )
    dm = build(cfg.data)
    dm.build()
    return build(cfg.model), dm


def trainer(run: Path, loggers: list, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        logger=loggers,
        default_root_dir=str(run),
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_a_class_absent_from_the_split_is_missing_not_zero(data_dir, tmp_path):
    system, dm = moe_and_data(data_dir, tmp_path / "run")
    system.class_names = names = dm.class_names
    x, y = dm.sets["val"].tensors
    keep = y != 0  # the validation subset has no sample of the first class
    assert (~keep).any() and len(set(y[keep].tolist())) > 1
    loader = DataLoader(TensorDataset(x[keep], y[keep]), batch_size=16)
    logger = RecordingLogger()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path / "run", [logger]).validate(system, dataloaders=loader, verbose=False)
    seen = set(y[keep].tolist())
    absent = [name for c, name in enumerate(names) if c not in seen]  # the first class, and any the tiny split lacks
    present = names[min(seen)]
    assert (
        names[0] in absent and f"val/acc_class/{present}" in logger.metrics and f"val/gate/expert_0/{present}" in logger.metrics
    )
    for name in absent:  # not 0.0: no key at all
        assert not any(key.endswith(f"/{name}") for key in logger.metrics), name
    assert all(math.isfinite(v) for v in logger.metrics.values())
    assert [str(w.message) for w in caught if "has no sample" in str(w.message)] == [
        f"[mixlab] the val split has no sample of {len(absent)} class(es): {', '.join(absent)}; "
        "their per-class accuracy and gate statistics are not logged"
    ]
    assert system.confusion["val"][0].sum() == 0 and system.confusion["val"].sum() == int(keep.sum())
    assert {"expert_analysis_epoch001.png", "confusion_matrix_epoch001.png"} <= {
        p.name for p in (tmp_path / "run" / "figures").glob("*")
    }


def test_expert_statistics_are_nan_for_an_absent_class():
    from mixlab.moe.system import MoEClassifierSystem

    stats = {
        "gate_sum": torch.tensor([[2.0, 0.0], [1.0, 0.0]]),
        "count": torch.tensor([3.0, 0.0]),
        "expert_correct": torch.tensor([[3.0, 0.0], [1.0, 0.0]]),
    }
    fake = type("Fake", (), {"_stats": stats, "_trainer": None})()
    contribution, accuracy = MoEClassifierSystem.expert_statistics(fake)
    torch.testing.assert_close(contribution[:, 0], torch.tensor([2 / 3, 1 / 3]))
    torch.testing.assert_close(accuracy[:, 0], torch.tensor([100.0, 100 / 3]))
    assert contribution[:, 1].isnan().all() and accuracy[:, 1].isnan().all()


def test_figures_draw_absent_classes_as_blank(tmp_path):
    names = ["a", "b", "c"]
    matrix = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 2]])
    assert plot_confusion(matrix, names, tmp_path / "c.png").stat().st_size > 2000
    values = np.array([[0.5, np.nan, 0.2], [0.5, np.nan, 0.8]])
    assert plot_expert_analysis(values, 100 * values, names, tmp_path / "e.png").stat().st_size > 2000


def test_moe_figures_reach_the_loggers(data_dir, tmp_path):
    system, dm = moe_and_data(data_dir, tmp_path / "run")
    recorder = RecordingLogger()
    loggers = [recorder, CSVLogger(str(tmp_path / "csv")), TensorBoardLogger(str(tmp_path / "tb"))]
    fit = trainer(
        tmp_path / "run", loggers, limit_train_batches=2, limit_val_batches=2, limit_test_batches=2, callbacks=[ExpertUsage()]
    )
    fit.fit(system, datamodule=dm)
    fit.test(system, datamodule=dm)
    logged = {key: (step, images) for key, step, images in recorder.images}
    assert {
        "figures/val/expert_analysis",
        "figures/val/confusion_matrix",
        "figures/expert_usage",
        "figures/test/expert_analysis",
        "figures/test/confusion_matrix",
    } <= set(logged)
    figures = tmp_path / "run" / "figures"
    for key, (step, images) in logged.items():
        assert step == fit.global_step == 2 and len(images) == 1 and Path(images[0]).parent == figures, key
        assert Path(images[0]).stat().st_size > 2000
    assert {"expert_usage_training.png", "expert_analysis_test.png", "confusion_matrix_test.png"} <= {
        p.name for p in figures.glob("*")
    }
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))  # TensorBoard got add_image calls without error
    assert next((tmp_path / "csv").rglob("metrics.csv")).is_file()  # the CSV logger: scalars only, figures stay on disk
