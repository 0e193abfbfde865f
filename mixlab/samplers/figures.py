"""Figures of a sampler's samples against its target (Agg backend, no display), one per energy:

- 25GMM: target contours with the samples, a KDE of the samples, a KDE of exact samples;
- Manywell: (x1, x3) and (x2, x3) (1-based: two wells' a, a pair's b) over the 2-d marginal's
  contours, exact samples in grey;
- Funnel: (x0, x1) over the marginal's contours, exact samples in grey;
- LGCP: the posterior mean of the expected counts exp(f) / G^2 beside the observed counts;
- anything else: the first two coordinates.

`draw(energy, x, truth, path, title)` picks the figure by the energy's class.
"""

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mixlab.samplers.energies import GMM25, Energy, Funnel, Manywell  # noqa: E402
from mixlab.samplers.lgcp import LGCP  # noqa: E402

SAMPLER, EXACT = "tab:red", "0.55"


def _np(x: torch.Tensor | None, limit: int = 2000) -> np.ndarray | None:
    return None if x is None else x[:limit].detach().double().cpu().numpy()


def _grid(lo: float, hi: float, lo2: float, hi2: float, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.linspace(lo, hi, n), np.linspace(lo2, hi2, n))


def _scatter(ax, pts: np.ndarray | None, i: int, j: int, color: str, label: str) -> None:
    if pts is not None:
        ax.scatter(pts[:, i], pts[:, j], s=3, alpha=0.5, color=color, label=label, rasterized=True)


def _kde(ax, pts: np.ndarray, lim: float, title: str) -> None:
    from scipy.stats import gaussian_kde

    xx, yy = _grid(-lim, lim, -lim, lim, 150)
    density = gaussian_kde(pts.T)(np.stack([xx.ravel(), yy.ravel()])).reshape(xx.shape)
    ax.contourf(xx, yy, density, levels=30, cmap="viridis")
    ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")


def gmm_figure(energy: GMM25, x, truth) -> plt.Figure:
    lim = 13.0
    pts, exact = _np(x), _np(truth)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.5))
    xx, yy = _grid(-lim, lim, -lim, lim)
    grid = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1)).to(energy.means)
    log_r = energy.log_reward(grid).cpu().numpy().reshape(xx.shape)
    axes[0].contour(xx, yy, np.maximum(log_r, -30), levels=20, cmap="Greys", linewidths=0.6)
    _scatter(axes[0], pts, 0, 1, SAMPLER, "sampler")
    axes[0].set(title=f"target contours + {len(pts)} samples", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    _kde(axes[1], pts, lim, "KDE of the samples")
    if exact is not None:
        _kde(axes[2], exact, lim, "KDE of exact samples")
    return fig


def manywell_figure(energy: Manywell, x, truth) -> plt.Figure:
    pts, exact = _np(x), _np(truth)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    well = lambda a: -(a**4) + 6 * a**2 + 0.5 * a  # noqa: E731
    for ax, (i, j), (lo, hi) in zip(axes, [(0, 2), (1, 2)], [(-3, 3), (-4, 4)]):
        xx, yy = _grid(lo, hi, -3, 3)
        first = well(xx) if i % 2 == 0 else -0.5 * xx**2
        ax.contour(xx, yy, np.maximum(first + well(yy), -40), levels=25, cmap="Greys", linewidths=0.6)
        _scatter(ax, exact, i, j, EXACT, "exact")
        _scatter(ax, pts, i, j, SAMPLER, "sampler")
        ax.set(xlabel=f"x{i + 1}", ylabel=f"x{j + 1}", xlim=(lo, hi), ylim=(-3, 3), title=f"(x{i + 1}, x{j + 1})")
    axes[0].legend(loc="upper left", fontsize=8, markerscale=3)
    return fig


def funnel_figure(energy: Funnel, x, truth) -> plt.Figure:
    pts, exact = _np(x), _np(truth)
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    xx, yy = _grid(-10, 10, -10, 10)
    log_p = -0.5 * (xx / energy.scale) ** 2 - 0.5 * yy**2 * np.exp(-xx) - 0.5 * xx
    ax.contour(xx, yy, np.maximum(log_p, -25), levels=25, cmap="Greys", linewidths=0.6)
    _scatter(ax, exact, 0, 1, EXACT, "exact")
    _scatter(ax, pts, 0, 1, SAMPLER, "sampler")
    ax.set(xlabel="x0", ylabel="x1", xlim=(-10, 10), ylim=(-10, 10), title="(x0, x1)")
    ax.legend(loc="upper left", fontsize=8, markerscale=3)
    return fig


def lgcp_figure(energy: LGCP, x, truth) -> plt.Figure:
    g = energy.grid
    expected = (torch.exp(x.double()) * energy.cell_area).mean(0).cpu().numpy().reshape(g, g)
    counts = energy.counts.cpu().numpy().reshape(g, g)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    top = max(float(counts.max()), float(expected.max()))
    for ax, image, title in [(axes[0], expected, f"posterior mean of exp(f)/G^2 ({len(x)} samples)"), (axes[1], counts, "observed counts")]:
        shown = ax.imshow(image.T, origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=0, vmax=top)
        ax.set(title=title, xlabel="x", ylabel="y")
        fig.colorbar(shown, ax=ax, fraction=0.046)
    if energy.points is not None:
        axes[1].scatter(energy.points[:, 0], energy.points[:, 1], s=4, color="white")
    return fig


def generic_figure(energy: Energy, x, truth) -> plt.Figure:
    pts, exact = _np(x), _np(truth)
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    _scatter(ax, exact, 0, 1, EXACT, "exact")
    _scatter(ax, pts, 0, 1, SAMPLER, "sampler")
    ax.set(xlabel="x0", ylabel="x1")
    return fig


FIGURES: dict[type, Callable] = {GMM25: gmm_figure, Manywell: manywell_figure, Funnel: funnel_figure, LGCP: lgcp_figure}


def figure_for(energy: Energy) -> Callable:
    return next((FIGURES[c] for c in type(energy).__mro__ if c in FIGURES), generic_figure)


def draw(energy: Energy, x: torch.Tensor, truth: torch.Tensor | None, path: str | Path | None = None, title: str = ""):
    """The energy's figure of samples x [n,d] (and exact samples `truth`); saved to `path` (PNG)
    and closed when a path is given, else returned open."""
    fig = figure_for(energy)(energy, x.detach().cpu(), None if truth is None else truth.detach().cpu())
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


def title_of(metrics: dict, step: int | None = None) -> str:
    """A one-line summary for a figure's title."""
    parts = [f"step {step}"] if step is not None else []
    for key, fmt in [("log_z_hat", "log Z^ {:.3f}"), ("log_z_rw", "log Z^_RW {:.3f}"), ("w2", "W2 {:.3f}"),
                     ("modes_hit", "modes {}"), ("shallow_share", "shallow {:.3f}")]:
        value = metrics.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(fmt.format(value))
    return "   ".join(parts)
