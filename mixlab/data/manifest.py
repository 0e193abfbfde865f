"""Data manifests: what a ``make data*`` step wrote, checked before training reads it.

Every prepared data folder (``<root>/text/<corpus>-<tokenizer>/``, ``<root>/MNIST/raw/``, ...)
holds one ``manifest.json`` written with its data files::

    {"format": 1, "rebuild": "make data-text CORPUS=classics TOKENIZERS=char",
     "files": {"train.bin": {"bytes": 23816886, "dtype": "uint16", "elements": 11908443,
                             "sha256": "9f2c...", "sha256_of": "file"}, ...}}

``bytes``: the file's size; ``dtype`` / ``elements``: what it holds (for an IDX file, the
array inside it; for a raw memmap, ``bytes == elements * itemsize``); ``sha256``: of the whole
file up to ``WHOLE_FILE_HASH_MAX`` bytes (64 MiB), else of its first and last MiB plus its size
(``sha256_of: "first and last MiB"``): cheap for a multi-GB memmap, and still catches a
truncation or a rewrite of either end; bytes changed in the middle of such a file go unnoticed.

``verify(path, rebuild)`` raises a one-line ``CorruptDataError`` naming the file, what is wrong
and the command that rebuilds it. A file without a manifest (written by an older version or by
hand) is accepted, unless it is a raw memmap whose size is not a multiple of its dtype.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from mixlab.core.errors import DataNotFoundError, MixlabError

MANIFEST_NAME = "manifest.json"
FORMAT = 1
WHOLE_FILE_HASH_MAX = 64 * 2**20
EDGE_BYTES = 2**20  # hashed at each end of a bigger file
WHOLE, EDGES = "file", "first and last MiB"


def is_make_root(root: str | os.PathLike) -> bool:
    """Whether ``root`` is the data folder the make targets write (``data/`` of the project)."""
    return Path(root) == Path("data") or Path(root).resolve() == Path(__file__).resolve().parents[2] / "data"


class CorruptDataError(MixlabError, ValueError):
    """A data file exists but is damaged or cannot be parsed (truncated, bytes changed, wrong format)."""


def file_checksum(path: str | os.PathLike) -> tuple[str, str]:
    """(sha256 hex digest, what it covers: ``WHOLE`` or ``EDGES``) of a file (see the module doc)."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_HASH_MAX:
            for chunk in iter(lambda: f.read(2**22), b""):
                digest.update(chunk)
            return digest.hexdigest(), WHOLE
        digest.update(f.read(EDGE_BYTES))
        f.seek(size - EDGE_BYTES)
        digest.update(f.read(EDGE_BYTES))
    digest.update(str(size).encode())
    return digest.hexdigest(), EDGES


def describe_file(path: str | os.PathLike, dtype: str | np.dtype, elements: int | None = None) -> dict:
    """A manifest entry; ``elements`` defaults to a raw memmap's (bytes / itemsize)."""
    size, dtype = os.path.getsize(path), np.dtype(dtype)
    digest, covers = file_checksum(path)
    count = size // dtype.itemsize if elements is None else int(elements)
    return {"bytes": size, "dtype": dtype.name, "elements": count, "sha256": digest, "sha256_of": covers}


def write_manifest(folder: str | os.PathLike, files: dict[str, dict], rebuild: str) -> Path:
    """Write ``<folder>/manifest.json`` for ``files`` ({file name in folder: {"dtype", optional
    "elements"}}), atomically; ``rebuild`` is the command that rebuilds the folder."""
    folder = Path(folder)
    entries = {name: describe_file(folder / name, spec["dtype"], spec.get("elements")) for name, spec in sorted(files.items())}
    path, tmp = folder / MANIFEST_NAME, folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "rebuild": rebuild, "files": entries}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's manifest, or None when it has none; an unreadable one is a ``ValueError``."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{MANIFEST_NAME} beside it is unreadable ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{MANIFEST_NAME} beside it has no 'files' table")
    return manifest


def _stamp(path: Path) -> tuple:
    manifest = path.parent / MANIFEST_NAME
    stats = [p.stat() for p in (path, manifest) if p.exists()]
    return tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats)


def problem(path: str | os.PathLike, dtype: str | np.dtype | None = None) -> str | None:
    """What is wrong with a data file ("size 1234 bytes, the manifest says 5678", ...), or None.

    Checked against its folder's manifest when that lists it; otherwise only a raw memmap
    (``dtype`` given) whose size is not a multiple of the dtype size is wrong. The result is
    cached per file size / time stamp, so a file is hashed once per process."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    return _problem(str(path), None if dtype is None else np.dtype(dtype).name, _stamp(path))


@functools.lru_cache(maxsize=64)
def _problem(path_str: str, dtype: str | None, _stamp: tuple) -> str | None:
    path = Path(path_str)
    size = path.stat().st_size
    try:
        manifest = read_manifest(path.parent)
    except ValueError as e:
        return str(e)
    entry = None if manifest is None else manifest["files"].get(path.name)
    if entry is None:
        itemsize = np.dtype(dtype).itemsize if dtype else 1
        if size % itemsize:
            return f"size {size} bytes is not a multiple of the {dtype} size ({itemsize} bytes): the file is truncated"
        return None
    if not isinstance(entry, dict) or not {"bytes", "sha256"} <= entry.keys():
        return f"its entry in {MANIFEST_NAME} is incomplete"
    if size != entry["bytes"]:
        return (
            f"size {size} bytes, the manifest says {entry['bytes']} "
            f"({entry.get('elements', '?')} {entry.get('dtype', '?')} elements)"
        )
    digest, covers = file_checksum(path)
    if digest != entry["sha256"]:
        what = "" if covers == WHOLE else f" ({covers})"
        return f"sha256{what} differs from the manifest's (same size, {size} bytes: bytes changed in place)"
    return None


def verify(path: str | os.PathLike, rebuild: str, dtype: str | np.dtype | None = None) -> None:
    """Raise one line naming ``path``, what is wrong and ``rebuild`` (the command) when
    ``problem(path, dtype)`` finds something; a missing file is a ``DataNotFoundError``."""
    found = problem(path, dtype)
    if found == "missing":
        raise DataNotFoundError(f"{path}: missing; rebuild it with `{rebuild}`")
    if found is not None:
        raise CorruptDataError(f"{path}: {found}; rebuild it with `{rebuild}`")
