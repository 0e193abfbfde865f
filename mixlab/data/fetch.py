"""``apt-get`` for the fetchers that take data from Debian packages (sudo when not root)."""

import os
import shutil
import subprocess


def apt_get(*args: str) -> subprocess.CompletedProcess:
    """``[sudo] apt-get <args>``, non-interactive; the caller reads ``returncode`` / ``stderr``."""
    sudo = [] if os.geteuid() == 0 or shutil.which("sudo") is None else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run([*sudo, "apt-get", *args], capture_output=True, text=True, env=env, timeout=900)


_apt_get = apt_get  # the name mixlab.samplers.lgcp imports
