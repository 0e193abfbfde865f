"""What the online text corpora (SEDD's data, ``mixlab.data.corpora``) are read with: HF
``datasets`` records and the reference's detokenisers.

Each record of a split is one document (as in the reference: a WikiText record is a line of
an article, a PTB/LM1B record a sentence); its text field goes through the corpus's
detokeniser before tokenising. Corpora and their sources:

| corpus | source | splits |
|---|---|---|
| openwebtext | HF ``Skylion007/openwebtext`` | train |
| wikitext103 / wikitext2 | HF ``Salesforce/wikitext`` ``wikitext-103-raw-v1`` / ``wikitext-2-raw-v1`` | train, val, test |
| ptb | HF ``ptb-text-only/ptb_text_only`` (field ``sentence``) | train, val, test |
| lm1b | HF ``billion-word-benchmark/lm1b`` | train, test |
| lambada | OpenAI's ``lambada_test.jsonl`` (GPT-2's LAMBADA) | test |
| text8 | ``mattmahoney.net/dc/text8.zip``: 100 M characters, split 90 M / 5 M / 5 M (D3PM) | train, val, test |

HF ``datasets`` is an optional extra (``pip install -e .[text]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from mixlab.core.errors import DataNotFoundError


# ---------------------------------------------------------------------------- detokenisers
def wikitext_detokenizer(text: str) -> str:
    """Undo WikiText's tokenisation: " @-@ " -> "-", spaced punctuation and brackets, " N " -> " 1 "."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for spaced, joined in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                           (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        text = text.replace(spaced, joined)
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    for spaced, joined in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
                           (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        text = text.replace(spaced, joined)
    return text


def ptb_detokenizer(text: str) -> str:
    """Undo PTB's tokenisation: " n't", " 's", "\\/" -> "/", " N " -> " 1 ", "<unk>" -> "?"."""
    for spaced, joined in ((" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), (" \n ", "\n"), ("\\/", "/")):
        text = text.replace(spaced, joined)
    for _ in range(10):  # overlapping " N N " runs
        text = text.replace(" N ", " 1 ")
    return text.replace("$ 1", "$1").replace("# 1", "#1").replace("<unk>", "?")


def lm1b_detokenizer(text: str) -> str:
    """Undo LM1B's tokenisation: URLs, contractions, spaced punctuation, quotes and brackets."""
    text = text.replace("http : / / ", "http://").replace("https : / / ", "https://")
    text = re.sub(r" \'(\w+)", r"'\1", text)
    text = re.sub(r" (\w+) \. ", r" \1. ", text)
    text = re.sub(r" (\w+) \.$", r" \1.", text)
    text = re.sub(r" \?$", "?", text.replace(" ? ", "? "))
    text = re.sub(r" \!$", "!", text.replace(" ! ", "! "))
    for spaced, joined in ((" , ", ", "), (" : ", ": "), (" ; ", "; "), (" / ", "/")):
        text = text.replace(spaced, joined)
    text = re.sub(r"\" ([^\"]+) \"", r'"\1"', text)
    text = re.sub(r"\' ([^\']+) \'", r"'\1'", text)
    text = re.sub(r"\( ([^\(\)]+) \)", r"(\1)", text)
    text = re.sub(r"\[ ([^\[\]]+) \]", r"[\1]", text)
    return text.replace("$ ", "$").replace("\N{POUND SIGN} ", "\N{POUND SIGN}")


def lambada_detokenizer(text: str) -> str:
    """Curly double quotes -> '"', stripped, prefixed with a newline (as the reference)."""
    return "\n" + text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"').replace("\N{RIGHT DOUBLE QUOTATION MARK}", '"').strip()


# ------------------------------------------------------------------------------ records
class RecordTexts:
    """The documents of a split: ``detokenizer(record[field])`` per record, re-iterable.

    ``records`` is anything iterable of dicts: a ``datasets.Dataset``, a list of dicts."""

    def __init__(self, records: Iterable[dict], field: str = "text", detokenizer: Callable[[str], str] | None = None):
        self.records, self.field, self.detokenizer = records, field, detokenizer

    def __iter__(self) -> Iterator[str]:
        for record in self.records:
            text = record[self.field]
            yield self.detokenizer(text) if self.detokenizer else text

    def __len__(self) -> int:
        return len(self.records)


def hf_load_dataset(path: str, config: str | None, split: str):
    """``datasets.load_dataset(path, config, split=split)``; a clear error when not installed."""
    try:
        import datasets
    except ImportError:
        raise DataNotFoundError("the online text corpora need HF `datasets`: pip install -e '.[text]'") from None
    return datasets.load_dataset(path, config, split=split)


def text8_splits(text: str, train: int = 90_000_000, val: int = 5_000_000) -> dict[str, list[str]]:
    """text8's usual character split (D3PM): first 90 M train, next 5 M val, the rest test."""
    return {"train": [text[:train]], "val": [text[train : train + val]], "test": [text[train + val :]]}
