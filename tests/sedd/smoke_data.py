"""The SEDD experiments' tiny data in the tests' data root (tests/conftest.py calls `write`): small
"classics" corpora with both tokenizers, so every text experiment runs under debug=smoke. The
GPT-2 BPE file is data/'s if `make data-text` installed it, else fetched the way make does."""

from pathlib import Path

from sedd_text_helpers import link_bpe_file, write_tiny_corpus

from mixlab.data.text_tokenizers import GPT2_BPE_CACHE_NAME, tiktoken_cache_dir
from tools.data.gpt2_bpe import install_gpt2_bpe

PROJECT = Path(__file__).resolve().parents[2]


def write(root: Path) -> None:
    write_tiny_corpus(root, tokenizer="char", corpus="classics")
    installed = tiktoken_cache_dir(PROJECT / "data") / GPT2_BPE_CACHE_NAME
    bpe = installed if installed.is_file() else install_gpt2_bpe(tiktoken_cache_dir(root / "bpe-cache"), quiet=True)
    link_bpe_file(bpe, root)
    write_tiny_corpus(root, tokenizer="gpt2", corpus="classics", sizes={"train": 120, "val": 12, "test": 10})
