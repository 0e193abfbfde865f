"""Helpers for the text-data tests: tiny corpora, an R XDR writer, a batch-recording module.

Everything is written under the directories the tests pass in (pytest tmp dirs)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import lightning as L
import torch

from mixlab.data.text_corpora import corpus_dir, write_corpus
from mixlab.data.text_tokenizers import GPT2_BPE_CACHE_NAME, tiktoken_cache_dir

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "far", "away")


def tiny_documents(n: int, words: int = 40, seed: int = 0, prefix: str = "doc") -> list[str]:
    """``n`` distinct pseudo-sentences ("doc3: the fox ...") of ``words`` words each."""
    g = torch.Generator().manual_seed(seed)
    return [
        f"{prefix}{i}: " + " ".join(WORDS[j] for j in torch.randint(len(WORDS), (words,), generator=g).tolist()) + "."
        for i in range(n)
    ]


def write_tiny_corpus(
    root: Path, tokenizer: str = "char", corpus: str = "classics", sizes: dict[str, int] | None = None, seed: int = 0
) -> dict:
    """A small corpus named ``corpus`` under ``root/text/<corpus>-<tokenizer>`` (train/val/test
    documents of ~250 characters); returns its meta. gpt2 needs the BPE file under root."""
    sizes = sizes or {"train": 40, "val": 6, "test": 5}
    texts = {split: tiny_documents(n, seed=seed + k, prefix=split) for k, (split, n) in enumerate(sizes.items())}
    return write_corpus(corpus_dir(root, corpus, tokenizer), corpus, texts, tokenizer, root, source="tiny test corpus")


def link_bpe_file(bpe_file: Path, root: Path) -> Path:
    """Make ``root`` hold the GPT-2 BPE file (a symlink) where the tokenizer looks for it."""
    target = tiktoken_cache_dir(root) / GPT2_BPE_CACHE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(bpe_file)
    return root


# ------------------------------------------------------------------------ R serialisation
class RWriter:
    """Serialise str / list[str] / list[int] / dict (a named list) the way R's XDR format does."""

    def __init__(self):
        self.symbols: list[str] = []

    def serialize(self, obj) -> bytes:
        header = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
        return header + self.item(obj)

    def charsxp(self, s: str) -> bytes:
        data = s.encode()
        return struct.pack(">ii", 9 | (1 << 15), len(data)) + data  # UTF-8 flag in the levels

    def symbol(self, name: str) -> bytes:
        if name in self.symbols:  # a reference to the symbol written before
            return struct.pack(">i", ((self.symbols.index(name) + 1) << 8) | 255)
        self.symbols.append(name)
        return struct.pack(">i", 1) + self.charsxp(name)

    def item(self, obj) -> bytes:
        if isinstance(obj, dict):  # VECSXP with a names attribute (a pairlist with one tagged cell)
            out = struct.pack(">ii", 19 | (1 << 9), len(obj)) + b"".join(self.item(v) for v in obj.values())
            attr = struct.pack(">i", 2 | (1 << 10)) + self.symbol("names") + self.item(list(obj))
            return out + attr + struct.pack(">i", 254)
        if obj and all(isinstance(v, int) for v in obj):
            return struct.pack(f">ii{len(obj)}i", 13, len(obj), *obj)
        return struct.pack(">ii", 16, len(obj)) + b"".join(self.charsxp(s) for s in obj)


def write_lazyload_db(prefix: Path, objects: dict[str, list[str]]) -> Path:
    """``<prefix>.rdx`` + ``<prefix>.rdb`` as R's lazy-load data base (what janeaustenr ships)."""
    blob, index = b"", {}
    for name, value in objects.items():
        data = RWriter().serialize(value)
        record = struct.pack(">I", len(data)) + zlib.compress(data)
        index[name] = [len(blob), len(record)]
        blob += record
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.rdb").write_bytes(blob)
    Path(f"{prefix}.rdx").write_bytes(
        gzip.compress(RWriter().serialize({"variables": index, "references": {}, "compressed": [1]}))
    )
    return prefix


# ------------------------------------------------------------------ Lightning batch recorder
class BatchRecorder(L.LightningModule):
    """Records every training batch it sees (one scalar weight, lr 0: only the data matters)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.clone())
        return self.weight * batch.float().mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)
