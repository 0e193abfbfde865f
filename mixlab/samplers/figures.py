"""Figures of a sampler's samples against its target (Agg backend, no display).

Each energy draws its own figure (`Energy.figure(x, truth)`: 25GMM contours and KDEs, Manywell
and Funnel marginals, the LGCP intensity; by default the first two coordinates) with the helpers
here; `draw(energy, x, truth, path, title)` saves it.
"""

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SAMPLER, EXACT = "tab:red", "0.55"


def as_numpy(x: torch.Tensor | None, limit: int = 2000) -> np.ndarray | None:
    """At most `limit` rows as a float64 array (None stays None)."""
    return None if x is None else x[:limit].detach().double().cpu().numpy()


def mesh(lo: float, hi: float, lo2: float, hi2: float, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.linspace(lo, hi, n), np.linspace(lo2, hi2, n))


def scatter(ax, pts: np.ndarray | None, i: int, j: int, color: str, label: str) -> None:
    if pts is not None:
        ax.scatter(pts[:, i], pts[:, j], s=3, alpha=0.5, color=color, label=label, rasterized=True)


def kde(ax, pts: np.ndarray, lim: float, title: str) -> None:
    from scipy.stats import gaussian_kde

    xx, yy = mesh(-lim, lim, -lim, lim, 150)
    density = gaussian_kde(pts.T)(np.stack([xx.ravel(), yy.ravel()])).reshape(xx.shape)
    ax.contourf(xx, yy, density, levels=30, cmap="viridis")
    ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")


def scatter_figure(
    x: torch.Tensor,
    truth: torch.Tensor | None,
    i: int = 0,
    j: int = 1,
    lim: tuple | None = None,
    ylim: tuple | None = None,
    title: str = "",
) -> plt.Figure:
    """Coordinates (i, j) of the samples (red) over exact samples (grey)."""
    pts, exact = as_numpy(x), as_numpy(truth)
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    scatter(ax, exact, i, j, EXACT, "exact")
    scatter(ax, pts, i, j, SAMPLER, "sampler")
    ax.set(xlabel=f"x{i}", ylabel=f"x{j}", title=title)
    if lim is not None:
        ax.set(xlim=lim, ylim=ylim or lim)
    if exact is not None:
        ax.legend(loc="upper left", fontsize=8, markerscale=3)
    return fig


def draw(energy, x: torch.Tensor, truth: torch.Tensor | None, path: str | Path | None = None, title: str = ""):
    """The energy's figure of samples x [n,d] (and exact samples `truth`); saved to `path` (PNG)
    and closed when a path is given, else returned open."""
    fig = energy.figure(x.detach().cpu(), None if truth is None else truth.detach().cpu())
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def title_of(metrics: dict, step: int | None = None, energy=None) -> str:
    """A one-line summary for a figure's title (with the energy's own statistics when given)."""
    parts = [f"step {step}"] if step is not None else []
    for key, fmt in [("log_z_hat", "log Z^ {:.3f}"), ("log_z_rw", "log Z^_RW {:.3f}"), ("w2", "W2 {:.3f}")]:
        value = metrics.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(fmt.format(value))
    if energy is not None and energy.describe(metrics):
        parts.append(energy.describe(metrics))
    return "   ".join(parts)
