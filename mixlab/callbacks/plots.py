"""Matplotlib figures written by callbacks and analysis commands (Agg backend, no display), and
`log_figure`, which sends a figure written during training to the run's loggers."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def log_figure(trainer, key: str, path: str | Path) -> None:
    """Log the PNG at `path` (already on disk under the run dir) as image `key` at the trainer's
    global step: wandb (and any logger with `log_image`) as an image, TensorBoard with
    `add_image`; the CSV logger keeps only the file. Call it from rank 0."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            import matplotlib.image

            logger.experiment.add_image(key, matplotlib.image.imread(str(path))[..., :3], trainer.global_step, dataformats="HWC")
        elif callable(getattr(logger, "log_image", None)):  # WandbLogger
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)


def plot_usage_history(
    history: Sequence[Sequence[float]],
    path: str | Path,
    title: str = "Expert usage during training",
    dead_threshold: float | None = 0.01,
) -> Path:
    """Share of assignments per expert vs epoch (one line per expert)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = range(1, len(history) + 1)
    for k in range(len(history[0]) if history else 0):
        ax.plot(epochs, [100 * row[k] for row in history], marker="o" if len(history) < 30 else None, ms=3, label=f"expert {k}")
    if dead_threshold is not None:
        ax.axhline(100 * dead_threshold, color="grey", ls=":", lw=1, label=f"dead (< {100 * dead_threshold:g}%)")
    ax.set(xlabel="epoch", ylabel="share of assignments (%)", title=title, ylim=(0, 100))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
