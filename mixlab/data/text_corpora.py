"""Text corpora on disk: each tokenised once into uint16 token files (nanoGPT's prepare.py),
by ``make data-text`` (``python -m tools.data.text``) or, for an online corpus, on first use.

Layout, one folder per (corpus, tokenizer), since a corpus may be tokenised either way::

    <root>/text/<corpus>-<tokenizer>/<split>.bin    uint16 token ids; every document followed by EOS
    <root>/text/<corpus>-<tokenizer>/meta.json      tokenizer, vocab_size, eos_id, chars (char only),
                                                    tokens / documents / skipped characters per split
    <root>/text/<corpus>-<tokenizer>/SOURCE.txt     where the text came from, how it was split
    <root>/text/<corpus>-<tokenizer>/manifest.json  bytes, token count and sha256 of each split file
                                                    (``mixlab.data.manifest``), checked before training
    <root>/text/tiktoken/<key>                      the GPT-2 BPE file in tiktoken's cache layout

Splits are ``train``, ``val``, ``test`` (a corpus may lack some: openwebtext has only train).
A build writes into a scratch folder next to the target and renames it when complete, so a
killed build leaves no half corpus behind. A folder whose split files fail their check
(``split_problem``) is rebuilt by the next ``build_corpus`` / ``make data-text`` as if missing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from mixlab.core.errors import DataNotFoundError
from mixlab.core.network import internet_reachable
from mixlab.data import manifest
from mixlab.data.corpora import Corpus, find_corpus, rebuild_command
from mixlab.data.text_tokenizers import CharTokenizer, GPT2Tokenizer, check_tokenizer_name

TOKEN_DTYPE = np.uint16
BATCH_DOCUMENTS = 512  # documents tokenised per call (tiktoken threads over a batch)


def corpus_dir(root: str | os.PathLike, corpus: str, tokenizer: str) -> Path:
    """``<root>/text/<corpus>-<tokenizer>``."""
    return Path(root) / "text" / f"{corpus}-{tokenizer}"


# --------------------------------------------------------------------------- file format
def pack_documents(token_lists: Iterable[list[int]], eos_id: int) -> np.ndarray:
    """Documents' ids joined into one uint16 stream, EOS after every document."""
    parts = [np.append(np.asarray(ids, dtype=np.int64), eos_id) for ids in token_lists]
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if stream.size and (stream.min() < 0 or stream.max() > np.iinfo(TOKEN_DTYPE).max):
        raise ValueError(f"token ids outside uint16: [{stream.min()}, {stream.max()}]")
    return stream.astype(TOKEN_DTYPE)


def read_tokens(path: str | os.PathLike) -> np.memmap:
    """A split's token file as a read-only uint16 memmap (no copy)."""
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def read_meta(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / "meta.json").read_text())


def split_problem(folder: str | os.PathLike, split: str) -> str | None:
    """What is wrong with ``<folder>/<split>.bin`` (``manifest.problem``; without a manifest, a
    size that is not meta.json's token count), or None."""
    path = Path(folder) / f"{split}.bin"
    found = manifest.problem(path, TOKEN_DTYPE)
    if found is not None:
        return found
    try:
        tokens = int(read_meta(folder)["splits"][split]["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no count to compare with
    size = path.stat().st_size
    if size != tokens * np.dtype(TOKEN_DTYPE).itemsize:
        return f"size {size} bytes, meta.json says {tokens} tokens ({tokens * np.dtype(TOKEN_DTYPE).itemsize} bytes)"
    return None


def corpus_problem(folder: str | os.PathLike) -> str | None:
    """The first damaged split file of a built corpus folder ("train.bin: size ..."), or None."""
    try:
        splits = read_meta(folder)["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"meta.json unreadable ({e})"
    for split in splits:
        found = split_problem(folder, split)
        if found is not None:
            return f"{split}.bin: {found}"
    return None


def check_split(root: str | os.PathLike, corpus: str, tokenizer: str, split: str) -> Path:
    """``<split>.bin`` of a built corpus, checked (``split_problem``); a damaged or missing file is
    one line naming it and the command that rebuilds the corpus."""
    path = corpus_dir(root, corpus, tokenizer) / f"{split}.bin"
    command = rebuild_command(corpus, tokenizer, root)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: missing; rebuild it with `{command}`")
    found = split_problem(path.parent, split)
    if found is not None:
        raise manifest.CorruptDataError(f"{path}: {found}; rebuild it with `{command}`")
    return path


def load_tokenizer(meta: dict, root: str | os.PathLike):
    """The tokenizer a corpus was built with (chars from meta.json; GPT-2 BPE from <root>)."""
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    return GPT2Tokenizer.load(root)


def _batches(texts: Iterable[str], size: int) -> Iterable[list[str]]:
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_split(path: Path, texts: Iterable[str], tokenizer) -> dict:
    """Tokenise ``texts`` (documents) into ``path``; returns {tokens, documents, skipped_chars}."""
    counts = {"tokens": 0, "documents": 0, "skipped_chars": 0}
    with open(path, "wb") as f:
        for batch in _batches(texts, BATCH_DOCUMENTS):
            if isinstance(tokenizer, CharTokenizer):
                counts["skipped_chars"] += sum(tokenizer.count_unknown(t) for t in batch)
            stream = pack_documents(tokenizer.encode_batch(batch), tokenizer.eos_id)
            stream.tofile(f)
            counts["tokens"] += int(stream.size)
            counts["documents"] += len(batch)
    return counts


def write_corpus(out: Path, name: str, texts: dict[str, Iterable[str]], tokenizer_name: str,
                 root: str | os.PathLike, meta_extra: dict | None = None, source: str = "") -> dict:
    """Tokenise {split: documents} into ``out`` (atomically); returns meta.json's content.

    ``texts`` values must be re-iterable (lists, ``RecordTexts``): the char vocabulary is built
    from the train split first (from all splits when there is no train split)."""
    if tokenizer_name == "char":
        vocab_texts = [texts["train"]] if "train" in texts else list(texts.values())
        tokenizer = CharTokenizer.from_texts(t for split in vocab_texts for t in split)
    else:
        tokenizer = GPT2Tokenizer.load(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # same file system as out
    scratch.chmod(0o755)
    try:
        splits = {split: write_split(scratch / f"{split}.bin", docs, tokenizer) for split, docs in texts.items()}
        meta = {"corpus": name, "tokenizer": tokenizer_name, "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id, "dtype": np.dtype(TOKEN_DTYPE).name,
                "eos": "appended after every document", "splits": splits, **(meta_extra or {})}
        if tokenizer_name == "char":
            meta["chars"] = tokenizer.chars
        (scratch / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        manifest.write_manifest(scratch, {f"{s}.bin": {"dtype": TOKEN_DTYPE, "elements": c["tokens"]} for s, c in splits.items()},
                                rebuild_command(name, tokenizer_name, root))
        tok = ("characters of the train split, code-point order, EOS = len(chars)" if tokenizer_name == "char"
               else "GPT-2 BPE (tiktoken r50k_base), EOS <|endoftext|> = 50256")
        (scratch / "SOURCE.txt").write_text(f"{source}\nTokenizer: {tok}; EOS after every document; uint16 ids.\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return meta


def ensure_manifest(root: str | os.PathLike, corpus: str, tokenizer: str) -> bool:
    """Write the manifest of an intact corpus folder built without one (by an older version); True if written."""
    folder = corpus_dir(root, corpus, tokenizer)
    if (folder / manifest.MANIFEST_NAME).is_file() or not (folder / "meta.json").is_file() or corpus_problem(folder):
        return False
    splits = read_meta(folder)["splits"]
    files = {f"{s}.bin": {"dtype": TOKEN_DTYPE, "elements": c["tokens"]} for s, c in splits.items()}
    manifest.write_manifest(folder, files, rebuild_command(corpus, tokenizer, root))
    return True


def is_built(folder: str | os.PathLike) -> bool:
    """A corpus folder with its meta.json and intact split files."""
    return (Path(folder) / "meta.json").is_file() and corpus_problem(folder) is None


def build_corpus(corpus: str, tokenizers: Iterable[str], root: str | os.PathLike = "data", force: bool = False,
                 spec: Corpus | None = None, documents: Callable | None = None) -> dict[str, dict]:
    """Fetch ``corpus``'s documents once and tokenise them with each tokenizer into
    ``<root>/text/<corpus>-<tokenizer>``; existing folders are kept unless ``force``.
    Returns {tokenizer: meta}. ``spec`` replaces the corpus class's instance, ``documents``
    its ``documents(workdir)`` (the preparation tools build offline corpora that way).
    GPT-2 BPE: the file under ``<root>/text/tiktoken`` or tiktoken's download (online corpora).
    A folder with a damaged split file (``corpus_problem``) is rebuilt."""
    spec = spec or find_corpus(corpus)
    todo = [t for t in (check_tokenizer_name(t) for t in tokenizers) if force or not is_built(corpus_dir(root, corpus, t))]
    metas = {t: read_meta(corpus_dir(root, corpus, t)) for t in tokenizers if t not in todo}
    if not todo:
        return metas
    if documents is None and spec.online and not internet_reachable(*spec.host):
        raise DataNotFoundError(f"corpus '{corpus}' comes from {spec.host[0]}, which is unreachable (offline); "
                                "use the offline corpus `classics` (make data-text)")
    with tempfile.TemporaryDirectory(prefix=f"mixlab-{corpus}-") as tmp:
        texts, extra, source = (documents or spec.documents)(Path(tmp))
        for tokenizer in todo:
            metas[tokenizer] = write_corpus(corpus_dir(root, corpus, tokenizer), corpus, texts, tokenizer, root, extra, source)
    return metas
