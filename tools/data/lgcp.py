"""`make data-lgcp` (python -m tools.data.lgcp --root data): the Finnish pine saplings for the LGCP energy.

Fetches the Debian package `r-cran-spatstat.data` with `apt-get download` (not installed: it
would pull in R), unpacks it with `dpkg-deb -x`, reads spatstat's plain-text copy
`rawdata/finpines/finpines.txt` (126 rows: x, y, diameter, height; window [-5,5] x [-8,2] m),
maps the points to the unit square ((x+5)/10, (y+8)/10) and writes
`<root>/finpines/points.csv` (columns x,y) + `SOURCE.txt`, which `mixlab.samplers.lgcp.LGCP` reads.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mixlab.core.errors import DataNotFoundError, MixlabError
from mixlab.data.manifest import problem, read_manifest, write_manifest
from mixlab.samplers.lgcp import FETCH_COMMAND, LGCP, load_points, points_file
from tools.data.packages import apt_get

DEBIAN_PACKAGE = "r-cran-spatstat.data"
PACKAGE_FILE = Path("usr/lib/R/site-library/spatstat.data/rawdata/finpines/finpines.txt")
WINDOW = ((-5.0, 5.0), (-8.0, 2.0))  # metres: x range, y range
N_POINTS = 126


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
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataNotFoundError(f"LGCP data needs apt-get and dpkg-deb (Debian package {DEBIAN_PACKAGE}); run `{FETCH_COMMAND}` on Debian/Ubuntu")
    proc = apt_get("download", DEBIAN_PACKAGE, cwd=workdir)  # apt-get download writes into its working directory
    if proc.returncode != 0:
        apt_get("update")
        proc = apt_get("download", DEBIAN_PACKAGE, cwd=workdir)
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
        found = problem(out)
        if found is None:
            if out.name not in ((read_manifest(out.parent) or {}).get("files") or {}):  # written by an older version
                write_manifest(out.parent, {out.name: {"dtype": "float64", "elements": load_points(root).size}}, FETCH_COMMAND)
            if not quiet:
                print(f"finpines: already present at {out}; skipping")
            return out
        print(f"finpines: {out}: {found}; fetching it again", flush=True)
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
        write_manifest(out.parent, {out.name: {"dtype": "float64", "elements": points.size}}, FETCH_COMMAND)
    if not quiet:
        print(f"finpines: {len(points)} points -> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.data.lgcp", description=__doc__.splitlines()[0])
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
