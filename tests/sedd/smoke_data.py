"""The SEDD experiments' tiny data in the tests' data root (tests/conftest.py calls `write`): a
small character-level "classics" corpus, so `data=text_classics_char` runs under debug=smoke."""

from pathlib import Path

from sedd_text_helpers import write_tiny_corpus


def write(root: Path) -> None:
    write_tiny_corpus(root, tokenizer="char", corpus="classics")
