"""Install the GPT-2 BPE file (tiktoken ``r50k_base``) under ``<root>/text/tiktoken``.

    python -m tools.data.gpt2_bpe [--root data]        (also run by ``make data-text``)

Online, tiktoken downloads it itself; otherwise it comes from the PyPI sdist of openai-whisper
(``pip download``), whose ``whisper/assets/gpt2.tiktoken`` is the same file. Either way the
sha256 must equal tiktoken's expected hash for r50k_base.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from mixlab.core.errors import DataNotFoundError, MixlabError
from mixlab.core.network import internet_reachable
from mixlab.data.text_tokenizers import (
    GPT2_BPE_CACHE_NAME,
    GPT2_BPE_SHA256,
    GPT2_BPE_URL,
    sha256_of,
    tiktoken_cache,
    tiktoken_cache_dir,
)
from tools.data.packages import pip_download_sdist

WHISPER_SDIST = "openai-whisper==20250625"  # ships whisper/assets/gpt2.tiktoken (= r50k_base)
WHISPER_BPE_MEMBER = "whisper/assets/gpt2.tiktoken"


def _bpe_from_whisper_sdist() -> bytes:
    with tempfile.TemporaryDirectory(prefix="mixlab-whisper-") as tmp:
        sdist = pip_download_sdist(WHISPER_SDIST, Path(tmp))
        with tarfile.open(sdist) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/" + WHISPER_BPE_MEMBER)), None)
            if member is None:
                raise DataNotFoundError(f"{sdist.name} holds no {WHISPER_BPE_MEMBER}")
            data = tar.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != GPT2_BPE_SHA256:
        raise DataNotFoundError(f"{WHISPER_SDIST}: {WHISPER_BPE_MEMBER} has sha256 "
                                f"{hashlib.sha256(data).hexdigest()}, expected {GPT2_BPE_SHA256}")
    return data


def install_gpt2_bpe(cache_dir: str | os.PathLike, quiet: bool = False) -> Path:
    """Put r50k_base's BPE file at ``<cache_dir>/<tiktoken cache key>``; returns its path."""
    cache_dir = Path(cache_dir)
    target = cache_dir / GPT2_BPE_CACHE_NAME
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if not target.is_file() and internet_reachable(GPT2_BPE_URL.split("/")[2], 443):
        import tiktoken

        try:
            with tiktoken_cache(cache_dir):
                tiktoken.get_encoding("r50k_base")  # downloads + checks the hash + writes the cache
            say(f"  GPT-2 BPE: downloaded by tiktoken from {GPT2_BPE_URL}")
        except Exception as e:  # network errors come in many types
            say(f"  GPT-2 BPE: tiktoken download failed ({e}); using the PyPI copy")
    if not target.is_file():
        data = _bpe_from_whisper_sdist()
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp_target = target.with_name(target.name + ".tmp")
        tmp_target.write_bytes(data)
        os.replace(tmp_target, target)
        say(f"  GPT-2 BPE: {WHISPER_BPE_MEMBER} from the PyPI sdist {WHISPER_SDIST}")
    digest = sha256_of(target)
    if digest != GPT2_BPE_SHA256:
        target.unlink()
        raise DataNotFoundError(f"{target}: sha256 {digest} is not r50k_base's {GPT2_BPE_SHA256}; removed it")
    say(f"  GPT-2 BPE: {target} ({target.stat().st_size:,} B, sha256 {digest} = r50k_base's: OK)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.data.gpt2_bpe", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="data root (default: data)")
    args = parser.parse_args(argv)
    try:
        install_gpt2_bpe(tiktoken_cache_dir(args.root))
    except (MixlabError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
