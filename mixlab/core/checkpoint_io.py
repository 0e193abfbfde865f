"""Files that are either complete or absent: checkpoints (through Lightning's CheckpointIO) and
small result files (metrics JSON) are written to a temporary file in the same directory,
flushed to disk, then renamed into place. A kill at any moment leaves the previous file intact.

Every checkpoint gets a sidecar `<name>.ckpt.sha256` (the `sha256sum` format, so
`sha256sum -c last.ckpt.sha256` checks it by hand) written after the checkpoint; reading a
checkpoint verifies it (`verify_digest`), which catches truncation, a broken header and changed
tensor bytes alike. A checkpoint without a sidecar (written by older versions, or by another
program) is accepted if it loads.

A write that fails for lack of space or permission (ENOSPC, EROFS, EACCES, ...) is a DiskError
naming the path, and the temporary file is removed.
"""

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mixlab.core.errors import DiskError

SIDECAR_SUFFIX = ".sha256"
CHUNK = 1 << 20


def sidecar_of(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


class _HashingWriter:
    """A binary file that hashes what goes through it (one pass: no re-read of a large file)."""

    def __init__(self, file):
        self.file, self.digest = file, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def disk_error(path: Path | str, err: OSError, atomic: bool = True) -> DiskError:
    """One line for an OSError while writing `path` (`atomic`: the write went through a temporary
    file, so nothing half-written is left)."""
    name = errno.errorcode.get(err.errno, "OSError") if err.errno else type(err).__name__
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(err.errno, err.strerror or str(err))
    return DiskError(
        f"cannot write {path} ({name}: {hint}); free space there or choose another log directory "
        "(paths.log_dir=DIR or hydra.run.dir=DIR)" + ("; nothing half-written was left" if atomic else "")
    )


def write_atomic(path: str | Path, write: Callable[[Any], None], before_replace: Callable[[], None] | None = None) -> str:
    """Call `write(file)` on a temporary file beside `path`, fsync it and rename it over `path`
    (`before_replace()` runs once the temporary file is complete). Returns the sha256 hex digest of
    what was written. Any failure removes the temporary file; an OSError becomes a DiskError naming `path`."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a writer killed mid-write
            stale.unlink(missing_ok=True)
        with open(tmp, "wb") as file:
            writer = _HashingWriter(file)
            write(writer)
            file.flush()
            os.fsync(file.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise disk_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return writer.digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync directories; the rename itself is atomic
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, data: Any, indent: int = 2) -> Path:
    """A JSON file written completely or not at all (metrics of an evaluation, say)."""
    text = json.dumps(data, indent=indent)
    write_atomic(path, lambda file: file.write(text.encode()))
    return Path(path)


def save_with_digest(checkpoint: dict, path: str | Path) -> None:
    """torch.save `checkpoint` atomically at `path`, then its sha256 sidecar (also atomically).

    The old sidecar is removed before the new checkpoint takes its place, so a kill between the
    two renames leaves a complete checkpoint without a sidecar (accepted if it loads), never a
    checkpoint next to the digest of another."""
    sidecar = sidecar_of(path)
    digest = write_atomic(path, lambda file: torch.save(checkpoint, file), before_replace=lambda: sidecar.unlink(missing_ok=True))
    write_atomic(sidecar, lambda file: file.write(f"{digest}  {Path(path).name}\n".encode()))


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_verified: dict[tuple, str | None] = {}


def verify_digest(path: str | Path) -> str | None:
    """None when `path` matches its sidecar (or has none); else what is wrong, in a few words.
    Results are remembered per (file size, modification times): peeks at the same file are cheap."""
    path, sidecar = Path(path), sidecar_of(path)
    if not sidecar.is_file():
        return None
    stat, side = path.stat(), sidecar.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, side.st_mtime_ns, side.st_size)
    if key not in _verified:
        try:
            expected = sidecar.read_text().split()[0].lower()
        except (OSError, IndexError, UnicodeDecodeError):
            expected = ""
        actual = file_digest(path)
        _verified[key] = (
            None if actual == expected else (f"checksum mismatch with {sidecar.name}: the file changed after it was written")
        )
    return _verified[key]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save/torch.load checkpoint IO, with atomic writes and sha256 sidecars.
    The pipeline gives it to every Trainer (unless `trainer.plugins` already names a CheckpointIO)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_with_digest(checkpoint, path)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        sidecar_of(path).unlink(missing_ok=True)

    def load_checkpoint(
        self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        from mixlab.core.errors import ConfigError

        if Path(path).is_file() and (problem := verify_digest(path)):
            raise ConfigError("ckpt_path", f"{path}: {problem}")
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
