"""Log-Gaussian Cox process on the Finnish pine saplings (Moller et al. 1998), 40 x 40 = 1600-d.

Data (what `make data-lgcp` runs):

    python -m mixlab.samplers.lgcp --root data

fetches the Debian package `r-cran-spatstat.data` with `apt-get download` (not installed: it
would pull in R), unpacks it with `dpkg-deb -x`, reads spatstat's plain-text copy
`rawdata/finpines/finpines.txt` (126 rows: x, y, diameter, height; window [-5,5] x [-8,2] m),
maps the points to the unit square ((x+5)/10, (y+8)/10) and writes
`<root>/finpines/points.csv` (columns x,y) + `SOURCE.txt`.

Energy (the reference's unwhitened `log_cox`): counts y_i of the points on a G x G grid (row =
floor(G x), col = floor(G y), row-major), latent f ~ N(mu 1, K) with
K_ij = s2 exp(-|g_i - g_j| / (G beta)) on integer cell coordinates g, s2 = 1.91, beta = 1/33,
mu = log(#points) - s2/2 (= log 126 - 0.955 on the real data), and

    log R(f) = log N(f; mu 1, K) + sum_i [y_i f_i - exp(f_i) / G^2]     (no log y_i! terms)

with log det K from a float64 Cholesky factor. No exact sampler, log Z unknown (None).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mixlab.core.errors import DataNotFoundError, MixlabError
from mixlab.samplers.energies import Energy

DEBIAN_PACKAGE = "r-cran-spatstat.data"
PACKAGE_FILE = Path("usr/lib/R/site-library/spatstat.data/rawdata/finpines/finpines.txt")
WINDOW = ((-5.0, 5.0), (-8.0, 2.0))  # metres: x range, y range
N_POINTS = 126
FETCH_COMMAND = "make data-lgcp"


def points_file(root: str | Path) -> Path:
    return Path(root) / "finpines" / "points.csv"


# ------------------------------------------------------------------------------------ data
def read_finpines_txt(path: str | Path) -> np.ndarray:
    """spatstat's finpines.txt (header + rows x y diameter height) -> points in the unit square
    [N,2] float64, ((x+5)/10, (y+8)/10); every point must lie in the window."""
    raw = np.loadtxt(path, skiprows=1, ndmin=2)
    if raw.shape[1] != 4:
        raise DataNotFoundError(f"{path}: expected 4 columns (x y diameter height), got {raw.shape[1]}; run `{FETCH_COMMAND}`")
    (x0, x1), (y0, y1) = WINDOW
    unit = np.stack([(raw[:, 0] - x0) / (x1 - x0), (raw[:, 1] - y0) / (y1 - y0)], axis=1)
    outside = int(((unit < 0) | (unit > 1)).any(axis=1).sum())
    if outside:
        raise DataNotFoundError(f"{path}: {outside} of {len(unit)} points lie outside the window {WINDOW}")
    return unit


def _download_package(workdir: Path) -> Path:
    """`apt-get download` + `dpkg-deb -x` into workdir; returns the unpacked tree."""
    from mixlab.data.fetch import _apt_get  # the project's apt helper (sudo when not root)

    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataNotFoundError(f"LGCP data needs apt-get and dpkg-deb (Debian package {DEBIAN_PACKAGE}); run `{FETCH_COMMAND}` on Debian/Ubuntu")
    with contextlib.chdir(workdir):  # apt-get download writes into the current directory
        proc = _apt_get("download", DEBIAN_PACKAGE)
        if proc.returncode != 0:
            _apt_get("update")
            proc = _apt_get("download", DEBIAN_PACKAGE)
    debs = sorted(workdir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if proc.returncode != 0 or not debs:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise DataNotFoundError(f"`apt-get download {DEBIAN_PACKAGE}` failed ({last}); run `{FETCH_COMMAND}` with access to a Debian mirror")
    tree = workdir / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tree)], check=True, capture_output=True, timeout=300)
    return tree


def fetch_finpines(root: str | Path = "data", quiet: bool = False) -> Path:
    """Write `<root>/finpines/points.csv` + SOURCE.txt (idempotent); returns the csv path."""
    out = points_file(root)
    if out.is_file():
        if not quiet:
            print(f"finpines: already present at {out}; skipping")
        return out
    with tempfile.TemporaryDirectory(prefix="mixlab-finpines-") as tmp:
        installed = Path("/") / PACKAGE_FILE
        if installed.is_file():
            txt, origin = installed, f"the installed Debian package {DEBIAN_PACKAGE}"
        else:
            if not quiet:
                print(f"finpines: apt-get download {DEBIAN_PACKAGE} (unpacked with dpkg-deb, not installed) ...", flush=True)
            txt = _download_package(Path(tmp)) / PACKAGE_FILE
            origin = f"the Debian package {DEBIAN_PACKAGE} (apt-get download + dpkg-deb -x)"
            if not txt.is_file():
                raise DataNotFoundError(f"{DEBIAN_PACKAGE} has no {PACKAGE_FILE}; run `{FETCH_COMMAND}` again or report the package version")
        points = read_finpines_txt(txt)
        if len(points) != N_POINTS:
            raise DataNotFoundError(f"{txt}: expected {N_POINTS} points, got {len(points)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_csv = out.with_suffix(".csv.tmp")
        np.savetxt(tmp_csv, points, delimiter=",", header="x,y", comments="", fmt="%.17g")
        (out.parent / "SOURCE.txt").write_text(
            f"Finnish pine saplings (spatstat.data `finpines`, Moller et al. 1998), {len(points)} points.\n"
            f"From {origin}: /{PACKAGE_FILE}.\n"
            f"Mapped to the unit square: ((x+5)/10, (y+8)/10), window x in [-5,5], y in [-8,2] m.\n"
            "Equals the reference code's energies/data/df_pines.csv (gfn-diffusion, branch stagger).\n")
        tmp_csv.replace(out)
    if not quiet:
        print(f"finpines: {len(points)} points -> {out}")
    return out


def load_points(root: str | Path) -> np.ndarray:
    path = points_file(root)
    if not path.is_file():
        raise DataNotFoundError(f"LGCP data {path} missing: run `{FETCH_COMMAND}` (or `python -m mixlab.samplers.lgcp --root {root}`)")
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

    def __init__(self, root: str | None = "data", grid: int = 40, signal_variance: float = 1.91,
                 beta: float = 1 / 33, points: np.ndarray | None = None, lazy: bool = False):
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            from mixlab.core.errors import ConfigError

            raise ConfigError("model.energy.grid", f"must be an integer >= 1, got {grid!r}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixlab.samplers.lgcp", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="data root (default: data)")
    args = parser.parse_args(argv)
    try:
        fetch_finpines(args.root)
        energy = LGCP(args.root)
    except MixlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = energy.counts
    print(f"finpines: {energy.n_points} points, {int((counts > 0).sum())} non-empty cells of {energy.dim}, "
          f"max {int(counts.max())} per cell, log det K = {energy.log_det_kernel:.5f}, mu = {energy.mu:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
