"""MoE classifier figures (matplotlib Agg): expert analysis heat maps, confusion matrix,
sample predictions with gate contributions. A class with no sample shows as grey n/a cells."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _heatmap(ax, values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, fmt: str, vmax=None):
    """NaN cells (a class with no sample) are grey and marked n/a."""
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", vmin=0, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    if values.size <= 400:
        for (i, j), v in np.ndenumerate(values):
            if np.isnan(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=5, color="0.4")
            else:
                ax.text(
                    j,
                    i,
                    format(v, fmt),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="w" if v < 0.6 * (vmax or np.nanmax(values) or 1) else "k",
                )
    return im


def plot_expert_analysis(
    contribution: np.ndarray, expert_accuracy: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """contribution [E,C]: mean gate of expert k on class c; expert_accuracy [E,C] (%) when the
    classifier sees only expert k (one-hot gate)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    experts = [f"expert {k}" for k in range(contribution.shape[0])]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.55 * len(class_names) * 2, 1.5 + 0.5 * len(experts)))
    im0 = _heatmap(axes[0], expert_accuracy, experts, class_names, "accuracy (%) with only expert k", ".0f", vmax=100)
    im1 = _heatmap(axes[1], contribution, experts, class_names, "expert contribution: mean gate per class", ".2f", vmax=1)
    fig.colorbar(im0, ax=axes[0], fraction=0.03)
    fig.colorbar(im1, ax=axes[1], fraction=0.03)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Rows: true class, columns: predicted class, row-normalised (a class with no sample: an n/a row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    support = matrix.sum(axis=1, keepdims=True)
    norm = np.where(support > 0, matrix / np.maximum(support, 1), np.nan)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
    _heatmap(ax, norm, class_names, class_names, "confusion matrix (row-normalised)", ".2f", vmax=1)
    ax.set(xlabel="predicted", ylabel="true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sample_predictions(
    images: np.ndarray, true: Sequence[int], pred: Sequence[int], gates: np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    """images [N,H,W,3] in [0,1]; one column per sample: image (title true/pred) over a gate bar chart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        ok = int(true[i]) == int(pred[i])
        axes[0, i].imshow(images[i])
        axes[0, i].set_title(f"T: {class_names[true[i]]}\nP: {class_names[pred[i]]}", fontsize=6, color="green" if ok else "red")
        axes[0, i].axis("off")
        axes[1, i].bar(range(gates.shape[1]), gates[i], color="tab:blue")
        axes[1, i].set(ylim=(0, 1), xticks=range(gates.shape[1]))
        axes[1, i].tick_params(labelsize=6)
    axes[1, 0].set_ylabel("gate", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
