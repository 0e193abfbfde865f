"""Tokenizers for the text corpora: GPT-2 BPE and characters.

Both turn ``str`` into ``list[int]`` and back, and know ``vocab_size`` (every id they emit,
end-of-text included) and ``eos_id`` (the id appended after every document).

* ``gpt2``: tiktoken's ``r50k_base`` (the GPT-2 BPE): 50,257 ids, EOS ``<|endoftext|>`` = 50256.
  Text is encoded as ordinary text (a literal "<|endoftext|>" in a document stays text).
  The BPE file is read from ``<root>/text/tiktoken`` (tiktoken's cache layout, installed by
  ``make data-text``: ``tools/data/gpt2_bpe.py``), else tiktoken's own cache or download.
* ``char``: one id per character of a vocabulary built from a corpus's train split, in
  code-point order, then EOS = len(chars). Characters outside it are skipped when encoding
  (the corpus's meta.json counts them per split).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mixlab.core.errors import ArgumentError, DataNotFoundError
from mixlab.core.network import internet_reachable

TOKENIZERS = ("gpt2", "char")
EOS_TEXT = "<|endoftext|>"
UNKNOWN_ID_TEXT = "\ufffd"  # how decode shows ids outside the vocabulary (e.g. a MASK id)

GPT2_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_BPE_CACHE_NAME = hashlib.sha1(GPT2_BPE_URL.encode()).hexdigest()  # tiktoken's cache key
_TIKTOKEN_ENV_LOCK = threading.Lock()


def check_tokenizer_name(name: str) -> str:
    if name not in TOKENIZERS:
        raise ArgumentError("tokenizer", f"unknown tokenizer '{name}' (choose {'|'.join(TOKENIZERS)})")
    return name


def tiktoken_cache_dir(root: str | os.PathLike) -> Path:
    """``<root>/text/tiktoken``: the GPT-2 BPE file in tiktoken's cache layout."""
    return Path(root) / "text" / "tiktoken"


def sha256_of(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ GPT-2 BPE
class GPT2Tokenizer:
    """GPT-2 BPE through a ``tiktoken.Encoding`` (r50k_base)."""

    name = "gpt2"

    def __init__(self, encoding):
        self.encoding = encoding
        self.vocab_size = encoding.n_vocab  # 50257
        self.eos_id = encoding.eot_token  # 50256

    @classmethod
    def load(cls, root: str | os.PathLike = "data") -> GPT2Tokenizer:
        return cls(load_gpt2_encoding(root))

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Sequence[int]) -> str:
        return _decode_runs(ids, self.vocab_size, self.encoding.decode)


def _decode_runs(ids: Sequence[int], vocab_size: int, decode) -> str:
    """decode() runs of in-vocabulary ids; every other id becomes UNKNOWN_ID_TEXT."""
    out, run = [], []
    for i in (int(i) for i in ids):
        if 0 <= i < vocab_size:
            run.append(i)
            continue
        if run:
            out.append(decode(run))
            run = []
        out.append(UNKNOWN_ID_TEXT)
    if run:
        out.append(decode(run))
    return "".join(out)


@contextlib.contextmanager
def tiktoken_cache(cache_dir: Path):
    """Point tiktoken's cache at ``cache_dir`` while an encoding is built (env restored after)."""
    with _TIKTOKEN_ENV_LOCK:
        old = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = old


def _default_tiktoken_cache() -> Path:
    env = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "data-gym-cache"


def load_gpt2_encoding(root: str | os.PathLike = "data"):
    """tiktoken's r50k_base: from ``<root>/text/tiktoken`` (``make data-text``), else tiktoken's
    own cache, else tiktoken's download when online; else ``DataNotFoundError``."""
    import tiktoken

    local = tiktoken_cache_dir(root)
    if (local / GPT2_BPE_CACHE_NAME).is_file():
        with tiktoken_cache(local):
            return tiktoken.get_encoding("r50k_base")
    host = GPT2_BPE_URL.split("/")[2]
    if (_default_tiktoken_cache() / GPT2_BPE_CACHE_NAME).is_file() or internet_reachable(host, 443):
        return tiktoken.get_encoding("r50k_base")
    raise DataNotFoundError(
        f"the GPT-2 BPE file (tiktoken r50k_base) is not under {local} and {host} is unreachable (offline). "
        f"Run `make data-text` (python -m tools.data.gpt2_bpe --root {root}) to install it."
    )


# ----------------------------------------------------------------------------- characters
class CharTokenizer:
    """Characters of a fixed vocabulary (ids 0..len-1 in code-point order), EOS = len(chars)."""

    name = "char"

    def __init__(self, chars: str):
        chars = "".join(sorted(set(chars)))
        if not chars:
            raise ValueError("a character vocabulary needs at least one character")
        self.chars = chars
        self.vocab_size = len(chars) + 1
        self.eos_id = len(chars)
        self._points = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)  # sorted code points

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(seen))

    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._points, points).clip(max=len(self.chars) - 1)
        return ids, self._points[ids] == points

    def encode(self, text: str) -> list[int]:
        ids, known = self._lookup(text)
        return ids[known].tolist()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def count_unknown(self, text: str) -> int:
        """How many characters of ``text`` encode() skips."""
        return int((~self._lookup(text)[1]).sum())

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of ``text`` outside the vocabulary (encode() would skip them), in order."""
        ids, known = self._lookup(text)
        return list(dict.fromkeys(ch for ch, ok in zip(text, known.tolist()) if not ok))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] if 0 <= i < len(self.chars) else EOS_TEXT if i == self.eos_id
                       else UNKNOWN_ID_TEXT for i in (int(i) for i in ids))

