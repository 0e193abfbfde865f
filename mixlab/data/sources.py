"""Where MNIST-style images come from: IDX files in torchvision's on-disk layout.

The one code path for reading data is torchvision's layout::

    <root>/MNIST/raw/train-images-idx3-ubyte[.gz]     uint8 [60000, 28, 28]
    <root>/MNIST/raw/train-labels-idx1-ubyte[.gz]     uint8 [60000]
    <root>/MNIST/raw/t10k-images-idx3-ubyte[.gz]      uint8 [10000, 28, 28]
    <root>/MNIST/raw/t10k-labels-idx1-ubyte[.gz]      uint8 [10000]
    <root>/FashionMNIST/raw/...                       (same file names)

``load_split`` reads those files. When they are missing it lets torchvision download them
(only when the internet is reachable), otherwise it raises ``DataNotFoundError`` naming the
make target that installs them (``tools/data/images.py``, which also knows offline fallbacks
and writes the same layout plus a ``SOURCE.txt`` describing where the files came from).
Both write ``raw/manifest.json`` (``mixlab.data.manifest``: bytes, element count, sha256 of each
file); ``load_split`` checks the files against it first, so a damaged file is one line naming
it and the make target. Files without a manifest are accepted when they parse.

A data set is one ``IDXImageSet`` subclass (its config name, folder, download mirror and make
target) plus one yaml under ``conf/data/``; ``image_set(name)`` finds it by its ``name``.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from mixlab.core.errors import ArgumentError, DataNotFoundError
from mixlab.core.network import internet_reachable  # noqa: F401  (sources.internet_reachable: patched in tests)
from mixlab.data import manifest
from mixlab.data.base import named_subclasses
from mixlab.data.manifest import CorruptDataError

# split name -> file-name prefix used by the IDX files
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
FETCH_HINT = "Run `{target}` (python -m tools.data.images {dataset} --root {root}) to install it."

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# -------------------------------------------------------------------------------- data sets
class IDXImageSet:
    """An MNIST-style data set: uint8 [N,28,28] images + labels as four IDX files under
    ``<root>/<folder>/raw``, where ``torchvision.datasets.<folder>`` downloads them."""

    name: ClassVar[str]  # the config name (``data.dataset``)
    folder: ClassVar[str]  # torchvision's class name = the folder under the data root
    mirror: ClassVar[tuple[str, int]]  # host, port torchvision downloads from (first mirror)
    make_target: ClassVar[str]  # the make command that installs it (offline fallbacks included)


class MNIST(IDXImageSet):
    name, folder, make_target = "mnist", "MNIST", "make data"
    mirror = ("ossci-datasets.s3.amazonaws.com", 443)


class FashionMNIST(IDXImageSet):
    name, folder, make_target = "fashion_mnist", "FashionMNIST", "make data-fashion"
    mirror = ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80)


def image_sets() -> list[type[IDXImageSet]]:
    """Every data set class (subclasses of ``IDXImageSet`` with a ``name``)."""
    return named_subclasses(IDXImageSet)


def image_set(dataset: str) -> type[IDXImageSet]:
    """The data set class named ``dataset``; an unknown name is an ``ArgumentError`` ("dataset")."""
    sets = image_sets()
    match = next((cls for cls in sets if cls.name == dataset), None)
    if match is None:
        raise ArgumentError("dataset", f"unknown dataset '{dataset}' (choose {'|'.join(c.name for c in sets)})")
    return match


def dataset_dir_name(dataset: str) -> str:
    """``"mnist"`` -> ``"MNIST"``."""
    return image_set(dataset).folder


def raw_dir(root: str | os.PathLike, dataset: str) -> Path:
    """``<root>/<Name>/raw``, spelled as the user gave ``root`` (for messages)."""
    return Path(root) / dataset_dir_name(dataset) / "raw"


def rebuild_command(root: str | os.PathLike, dataset: str) -> str:
    """The command that (re)installs ``dataset`` under ``root`` (the make target for ``data``)."""
    if manifest.is_make_root(root):
        return image_set(dataset).make_target
    return f"python -m tools.data.images {dataset} --root {root}"


def idx_file_names(split: str) -> tuple[str, str]:
    """Uncompressed (images, labels) file names of a split, e.g. ``t10k-images-idx3-ubyte``."""
    if split not in SPLIT_PREFIX:
        raise ArgumentError("split", f"unknown split '{split}' (choose {'|'.join(SPLIT_PREFIX)})")
    prefix = SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_split_files(root: str | os.PathLike, dataset: str, split: str) -> tuple[Path, Path] | None:
    """Existing (images, labels) paths of a split, preferring plain over ``.gz``; None if absent."""
    folder = raw_dir(root, dataset)
    found = []
    for name in idx_file_names(split):
        candidates = [folder / name, folder / f"{name}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


# ------------------------------------------------------------------------------ IDX format
def read_idx(path: str | os.PathLike, rebuild: str = "make data") -> np.ndarray:
    """Read an IDX file (gzip-compressed when the name ends in ``.gz``) into a numpy array.

    Format: 2 zero bytes, a type byte, a rank byte, ``rank`` big-endian uint32 sizes, data.
    Raises ``CorruptDataError`` (one line, names the file and ``rebuild``) when anything does not fit.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise CorruptDataError(f"{path}: cannot read IDX file ({e}); delete it and run `{rebuild}`") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise CorruptDataError(
            f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
            f"delete it and run `{rebuild}`"
        )
    dtype, rank = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * rank
    if len(raw) < header:
        raise CorruptDataError(f"{path}: truncated IDX header; delete it and run `{rebuild}`")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise CorruptDataError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes; delete it and run `{rebuild}`"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip when the name ends in ``.gz``), atomically."""
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    code = next((c for c, dt in _IDX_DTYPES.items() if dt.newbyteorder("=") == native), None)
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"cannot store dtype {array.dtype} / rank {array.ndim} in an IDX file")
    big_endian = array.astype(_IDX_DTYPES[code], copy=False)
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(big_endian).tobytes()
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(tmp, "wb", compresslevel=6) as f:
            f.write(payload)
    else:
        tmp.write_bytes(payload)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- download
def torchvision_download(root: str | os.PathLike, dataset: str) -> None:
    """Download both splits with ``torchvision.datasets.<Name>(root, download=True)``."""
    from torchvision import datasets

    cls = getattr(datasets, dataset_dir_name(dataset))
    for train in (True, False):
        cls(str(root), train=train, download=True)


# ---------------------------------------------------------------------------------- loading
@functools.lru_cache(maxsize=8)
def _read_split(images_path: str, labels_path: str, _stamp: tuple, rebuild: str = "make data") -> tuple[np.ndarray, np.ndarray]:
    """Read and check one split; cached on resolved paths (+ mtime/size so rewrites reload)."""
    images = read_idx(images_path, rebuild)
    labels = read_idx(labels_path, rebuild)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise CorruptDataError(f"{images_path}: expected uint8 images [N,28,28], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise CorruptDataError(f"{labels_path}: expected {images.shape[0]} labels, got shape {labels.shape}")
    labels = labels.astype(np.int64)
    images.setflags(write=False)  # shared by every caller through the cache
    labels.setflags(write=False)
    return images, labels


def load_split(
    root: str | os.PathLike, dataset: str, split: str, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N,28,28] and labels int64 [N] of ``split`` ("train" | "test").

    Order of sources: IDX files under ``<root>/<Name>/raw``; else, if ``download`` and the
    mirror answers within ~2 s, a torchvision download; else ``DataNotFoundError``.
    The returned arrays are read-only and shared (cached per resolved path): copy to modify.
    """
    name = dataset_dir_name(dataset)
    idx_file_names(split)  # validates split
    files = find_split_files(root, dataset, split)
    if files is None:
        where = raw_dir(root, dataset)
        hint = FETCH_HINT.format(target=image_set(dataset).make_target, dataset=dataset, root=root)
        if not download:
            raise DataNotFoundError(f"{name} not found under {where} (download disabled). {hint}")
        if not internet_reachable(*image_set(dataset).mirror):
            raise DataNotFoundError(f"{name} not found under {where} (offline). {hint}")
        try:
            torchvision_download(root, dataset)
        except Exception as e:  # network errors come in many types
            raise DataNotFoundError(
                f"{name} not found under {where} and the torchvision download failed ({e}). {hint}"
            ) from e
        files = find_split_files(root, dataset, split)
        if files is None:
            raise DataNotFoundError(f"{name} not found under {where} after the torchvision download. {hint}")
        write_manifest(root, dataset)
    rebuild = rebuild_command(root, dataset)
    for path in files:  # size and checksum against raw/manifest.json, when there is one
        manifest.verify(path, rebuild)
    images_path, labels_path = (p.resolve() for p in files)
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (images_path, labels_path))
    return _read_split(str(images_path), str(labels_path), stamp, rebuild)


def write_manifest(root: str | os.PathLike, dataset: str) -> Path | None:
    """Write ``raw/manifest.json`` for the IDX files both splits read (None: a split is missing)."""
    found = [find_split_files(root, dataset, split) for split in SPLIT_PREFIX]
    if not all(found):
        return None
    files = {}
    for path in (p for pair in found for p in pair):
        array = read_idx(path, rebuild_command(root, dataset))
        files[path.name] = {"dtype": array.dtype, "elements": array.size}
    return manifest.write_manifest(raw_dir(root, dataset), files, rebuild_command(root, dataset))


def dataset_provenance(root: str | os.PathLike, dataset: str) -> str:
    """Contents of ``<root>/<Name>/SOURCE.txt`` (written by ``make data``), else "torchvision layout"."""
    source = Path(root) / dataset_dir_name(dataset) / "SOURCE.txt"
    return source.read_text().strip() if source.is_file() else "torchvision layout"
