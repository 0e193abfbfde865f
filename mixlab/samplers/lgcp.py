"""Log-Gaussian Cox process on the Finnish pine saplings (Moller et al. 1998), 40 x 40 = 1600-d.

Data: `make data-lgcp` (tools/data/lgcp.py) writes `<root>/finpines/points.csv` (columns x,y: the
126 points mapped to the unit square); a missing file is one error naming that command.

Energy (the reference's unwhitened `log_cox`): counts y_i of the points on a G x G grid (row =
floor(G x), col = floor(G y), row-major), latent f ~ N(mu 1, K) with
K_ij = s2 exp(-|g_i - g_j| / (G beta)) on integer cell coordinates g, s2 = 1.91, beta = 1/33,
mu = log(#points) - s2/2 (= log 126 - 0.955 on the real data), and

    log R(f) = log N(f; mu 1, K) + sum_i [y_i f_i - exp(f_i) / G^2]     (no log y_i! terms)

with log det K from a float64 Cholesky factor. No exact sampler, log Z unknown (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mixlab.core.errors import DataNotFoundError
from mixlab.core.validate import PositiveFloat, PositiveInt, checked
from mixlab.data.manifest import verify
from mixlab.samplers.energies import Energy

FETCH_COMMAND = "make data-lgcp"


def points_file(root: str | Path) -> Path:
    return Path(root) / "finpines" / "points.csv"


def load_points(root: str | Path) -> np.ndarray:
    path = points_file(root)
    if not path.is_file():
        raise DataNotFoundError(f"LGCP data {path} missing: run `{FETCH_COMMAND}` (or `python -m tools.data.lgcp --root {root}`)")
    verify(path, FETCH_COMMAND)  # against the manifest `make data-lgcp` writes (a file without one is read as is)
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


# ---------------------------------------------------------------------------------- energy
def bin_counts(points: np.ndarray, grid: int) -> np.ndarray:
    """Counts [grid*grid] of unit-square points per cell, row = floor(grid x), col = floor(grid y)
    (a point on the upper edge goes to the last cell), row-major."""
    idx = np.minimum(np.floor(np.asarray(points) * grid).astype(np.int64), grid - 1)
    counts = np.zeros((grid, grid))
    np.add.at(counts, (idx[:, 0], idx[:, 1]), 1.0)
    return counts.reshape(-1)


def grid_kernel(grid: int, signal_variance: float = 1.91, beta: float = 1 / 33) -> torch.Tensor:
    """K [grid^2, grid^2] float64: s2 exp(-|g_i - g_j| / (grid beta)) on integer cell coordinates."""
    r = torch.arange(grid, dtype=torch.float64)
    cells = torch.cartesian_prod(r, r)  # row-major (row, col)
    return signal_variance * torch.exp(-torch.cdist(cells, cells) / (grid * beta))


class LGCP(Energy):
    """The LGCP posterior over the latent field f [B, grid^2] (unwhitened, as in the reference).

    `root`: data root holding finpines/points.csv; `points` [N,2] in the unit square instead
    (tests, smoke runs). Float64 precision matrix K^-1 as a non-persistent buffer; evaluated in
    x's dtype. `lazy=True` (the configs) reads the points only in `prepare()` (the system calls it
    before training / evaluating; the first evaluation otherwise), so a config builds without the data."""

    @checked
    def __init__(
        self,
        root: str | Path | None = "data",
        grid: PositiveInt = 40,
        signal_variance: PositiveFloat = 1.91,
        beta: PositiveFloat = 1 / 33,
        points: np.ndarray | Sequence[Sequence[float]] | None = None,
        lazy: bool = False,
    ):
        super().__init__()
        self.root, self.signal_variance = root, float(signal_variance)
        self.dim, self.log_z, self.grid = grid * grid, None, grid
        self.cell_area = 1.0 / (grid * grid)
        kernel = grid_kernel(grid, signal_variance, beta)
        chol = torch.linalg.cholesky(kernel)
        self.log_det_kernel = float(2 * torch.log(torch.diagonal(chol)).sum())
        self.log_norm = -0.5 * self.dim * math.log(2 * math.pi) - 0.5 * self.log_det_kernel
        self.register_buffer("precision", torch.cholesky_inverse(chol), persistent=False)  # K^-1
        self.register_buffer("counts", torch.zeros(self.dim, dtype=torch.float64), persistent=False)
        self.n_points, self.mu, self.points = None, None, None
        if points is not None:
            self._set_points(np.asarray(points, dtype=np.float64))
        elif not lazy:
            self.prepare()

    def _set_points(self, points: np.ndarray) -> None:
        self.points, self.n_points = points, len(points)
        self.mu = math.log(len(points)) - 0.5 * self.signal_variance
        self.counts.copy_(torch.from_numpy(bin_counts(points, self.grid)))

    def prepare(self) -> None:
        if self.points is None:
            self._set_points(load_points(self.root))

    def log_reward(self, x):
        self.prepare()
        centred = x - self.mu
        quad = (centred @ self.precision.to(x.dtype) * centred).sum(1)
        poisson = (x * self.counts.to(x.dtype) - torch.exp(x) * self.cell_area).sum(1)
        return self.log_norm - 0.5 * quad + poisson

    def grad_log_reward(self, x):
        self.prepare()
        return -(x - self.mu) @ self.precision.to(x.dtype) + self.counts.to(x.dtype) - torch.exp(x) * self.cell_area

    def log_reward_and_grad(self, x):
        self.prepare()
        centred = x - self.mu
        prec_c = centred @ self.precision.to(x.dtype)  # K^-1 (f - mu), K symmetric
        counts, rate = self.counts.to(x.dtype), torch.exp(x) * self.cell_area
        log_r = self.log_norm - 0.5 * (prec_c * centred).sum(1) + (x * counts - rate).sum(1)
        return log_r, counts - rate - prec_c

    def figure(self, x, truth):
        """The posterior mean of the expected counts exp(f) / G^2 beside the observed counts."""
        from mixlab.samplers.figures import plt

        g = self.grid
        expected = (torch.exp(x.double()) * self.cell_area).mean(0).cpu().numpy().reshape(g, g)
        counts = self.counts.cpu().numpy().reshape(g, g)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        top = max(float(counts.max()), float(expected.max()))
        for ax, image, title in [
            (axes[0], expected, f"posterior mean of exp(f)/G^2 ({len(x)} samples)"),
            (axes[1], counts, "observed counts"),
        ]:
            shown = ax.imshow(image.T, origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=0, vmax=top)
            ax.set(title=title, xlabel="x", ylabel="y")
            fig.colorbar(shown, ax=ax, fraction=0.046)
        if self.points is not None:
            axes[1].scatter(self.points[:, 0], self.points[:, 1], s=4, color="white")
        return fig
