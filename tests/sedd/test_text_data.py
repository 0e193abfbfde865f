"""Text data: tokenizers, corpus files (EOS packing, document splits, detokenisers, source
readers) and TextDataModule (shapes, rank/accumulation slicing, val sharding, mid-epoch
resume under a real Trainer, errors). Tiny corpora written under pytest tmp dirs."""

import types

import numpy as np
import pytest
from omegaconf import OmegaConf
from sedd_text_helpers import link_bpe_file, write_lazyload_db, write_tiny_corpus
from support import ROOT

from mixlab.core.config import build
from mixlab.core.errors import ArgumentError, ConfigError, DataNotFoundError
from mixlab.data import corpora, text, text_corpora
from mixlab.data.text import TextDataModule
from mixlab.data.text_corpora import build_corpus, corpus_dir, pack_documents, read_meta, read_tokens
from mixlab.data.text_online import (
    RecordTexts,
    lambada_detokenizer,
    lm1b_detokenizer,
    ptb_detokenizer,
    text8_splits,
    wikitext_detokenizer,
)
from mixlab.data.text_tokenizers import GPT2_BPE_CACHE_NAME, CharTokenizer, GPT2Tokenizer, sha256_of, tiktoken_cache_dir
from tools.data.classics import (
    BIBLE_BOOKS,
    TEST_DOCUMENTS,
    VAL_DOCUMENTS,
    austen_documents,
    bible_documents,
    shakespeare_documents,
    split_documents,
)
from tools.data.gpt2_bpe import install_gpt2_bpe
from tools.data.r_serialize import read_lazyload_db


@pytest.fixture(scope="session")
def bpe_file(tmp_path_factory):
    """The GPT-2 BPE file: data/'s if `make data-text` installed it, else fetched as make does."""
    installed = tiktoken_cache_dir(ROOT / "data") / GPT2_BPE_CACHE_NAME
    if installed.is_file():
        return installed
    return install_gpt2_bpe(tiktoken_cache_dir(tmp_path_factory.mktemp("bpe")), quiet=True)


def on_ranks(dm, world, rank, accumulate=1, stage="fit"):
    dm.trainer = types.SimpleNamespace(world_size=world, global_rank=rank, accumulate_grad_batches=accumulate)
    dm.setup(stage)
    return dm


# ------------------------------------------------------------------------------ tokenizers
def test_gpt2_tokenizer_offline(bpe_file, tmp_path):
    assert sha256_of(bpe_file).startswith("306cd27f")
    tok = GPT2Tokenizer.load(link_bpe_file(bpe_file, tmp_path))
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
    assert tok.decode(tok.encode("Hello world") + [tok.eos_id]) == "Hello world<|endoftext|>"
    assert tok.encode("a <|endoftext|>") != tok.encode("a ") + [tok.eos_id]  # a literal stays text
    assert tok.decode([15496, 50257]) == "Hello\ufffd"  # an id outside the vocabulary (e.g. MASK)


def test_char_tokenizer_round_trips():
    tok = CharTokenizer.from_texts(["hello world", "Zebra!"])
    assert tok.chars == " !Zabdehlorw" and (tok.vocab_size, tok.eos_id) == (13, 12)
    ids = tok.encode("hello Zebra!")
    assert tok.decode(ids) == "hello Zebra!" and max(ids) < tok.eos_id
    assert tok.encode("hello, world?") == tok.encode("hello world") and tok.count_unknown("hello, world?") == 2
    assert tok.decode([*tok.encode("ab"), tok.eos_id, 99]) == "ab<|endoftext|>\ufffd"


def test_unknown_tokenizer_and_corpus_are_argument_errors(tmp_path):
    with pytest.raises(ArgumentError, match=r"^tokenizer: unknown tokenizer 'bytes'"):
        TextDataModule(root=tmp_path, tokenizer="bytes")
    with pytest.raises(ArgumentError, match=r"^corpus: unknown corpus 'enwik8'"):
        TextDataModule(root=tmp_path, corpus="enwik8")
    with pytest.raises(ArgumentError, match=r"^eval_corpus"):
        TextDataModule(root=tmp_path, eval_corpus="enwik8")
    with pytest.raises(ArgumentError, match=r"^corpus: corpus 'lambada' has no train split"):
        TextDataModule(root=tmp_path, corpus="lambada", tokenizer="gpt2")
    with pytest.raises(ArgumentError, match=r"^val_split: corpus 'lm1b' has no 'val' split"):
        TextDataModule(root=tmp_path, corpus="lm1b", tokenizer="gpt2")
    for key, kwargs in (("length", {"length": 0}), ("train_limit", {"train_limit": -1}), ("num_workers", {"num_workers": -1})):
        with pytest.raises(ArgumentError, match=rf"^{key}: must be >="):
            TextDataModule(root=tmp_path, **kwargs)
    cfg = OmegaConf.create({"data": {"_target_": "mixlab.data.text.TextDataModule", "root": str(tmp_path), "corpus": "enwik8"}})
    with pytest.raises(ConfigError, match=r"^data\.corpus: unknown corpus 'enwik8'"):  # built from a config: the full key
        build(cfg.data)


# ---------------------------------------------------------------------------- corpus files
def test_eos_packing_and_uint16_round_trip(tmp_path):
    stream = pack_documents([[1, 2], [3], [], [65535]], eos_id=9)
    assert stream.dtype == np.uint16 and stream.tolist() == [1, 2, 9, 3, 9, 9, 65535, 9]
    with pytest.raises(ValueError, match="uint16"):
        pack_documents([[65536]], eos_id=0)
    meta = write_tiny_corpus(tmp_path, sizes={"train": 3, "val": 1, "test": 1})
    folder = corpus_dir(tmp_path, "classics", "char")
    tokens = read_tokens(folder / "train.bin")
    assert tokens.dtype == np.uint16 and len(tokens) == meta["splits"]["train"]["tokens"]
    tok = CharTokenizer(meta["chars"])
    docs = tok.decode(tokens.tolist()).split("<|endoftext|>")
    assert len(docs) == 4 and docs[-1] == "" and all(d.startswith(f"train{i}: ") for i, d in enumerate(docs[:3]))
    assert meta["eos_id"] == len(meta["chars"]) == meta["vocab_size"] - 1 and read_meta(folder) == meta
    assert (folder / "SOURCE.txt").read_text().startswith("tiny test corpus")


def test_char_vocabulary_comes_from_train_and_skips_unknown_characters(tmp_path):
    texts = {"train": ["abc", "cab"], "val": ["abz"], "test": ["zz"]}
    meta = text_corpora.write_corpus(tmp_path / "c", "classics", texts, "char", tmp_path)
    assert meta["chars"] == "abc" and meta["vocab_size"] == 4
    assert {s: c["skipped_chars"] for s, c in meta["splits"].items()} == {"train": 0, "val": 1, "test": 2}
    assert read_tokens(tmp_path / "c" / "val.bin").tolist() == [0, 1, 3]


def test_classics_split_is_by_whole_documents_from_the_fixed_lists():
    assert not set(VAL_DOCUMENTS) & set(TEST_DOCUMENTS)
    for names in (VAL_DOCUMENTS, TEST_DOCUMENTS):  # every source in val and in test
        assert {n.split(":")[0] for n in names} == {"Shakespeare", "Austen", "KJV"}
    docs = [(name, f"text of {name}") for name in ("Shakespeare: Hamlet", *VAL_DOCUMENTS, "KJV: Genesis", *TEST_DOCUMENTS)]
    splits = split_documents(docs)
    assert [t for t, _ in splits["val"]] == list(VAL_DOCUMENTS) and [t for t, _ in splits["test"]] == list(TEST_DOCUMENTS)
    assert [t for t, _ in splits["train"]] == ["Shakespeare: Hamlet", "KJV: Genesis"]
    titles = [t for docs in splits.values() for t, _ in docs]
    assert sorted(titles) == sorted(t for t, _ in docs) and len(set(titles)) == len(titles)  # disjoint, complete
    with pytest.raises(DataNotFoundError, match="Austen: Persuasion"):
        split_documents([d for d in docs if d[0] != "Austen: Persuasion"])
    with pytest.raises(ValueError, match="both val and test"):
        split_documents(docs, val=("KJV: Mark",), test=("KJV: Mark",))


def test_shakespeare_reader(tmp_path):
    (tmp_path / "metadata.txt").write_text("[hamlet_gut]\ntitle = Hamlet\n\n[hamlet_gut_f]\ntitle = Hamlet\n")
    (tmp_path / "hamlet_gut.txt").write_text("HAMLET\r\n\r\nWho's there?   \r\n\r\n\r\n")
    (tmp_path / "hamlet_gut_f.txt").write_text("folio: not read")
    (tmp_path / "sonnets_gut.txt").write_text("From fairest creatures")
    assert shakespeare_documents(tmp_path) == [
        ("Shakespeare: Hamlet", "HAMLET\n\nWho's there?"),
        ("Shakespeare: Sonnets", "From fairest creatures"),
    ]


def test_austen_reader_reads_an_r_lazy_load_database(tmp_path):
    novels = {"emma": ["EMMA", "", "By Jane Austen"], "persuasion": ["Persuasion", "Chapter 1 \u00a3"]}
    prefix = write_lazyload_db(tmp_path / "data" / "Rdata", novels)
    assert read_lazyload_db(prefix) == novels
    assert austen_documents(prefix) == [
        ("Austen: Emma", "EMMA\n\nBy Jane Austen"),
        ("Austen: Persuasion", "Persuasion\nChapter 1 \u00a3"),
    ]


def test_bible_reader_strips_verse_labels():
    abbreviations = [
        f"{'12'[i % 2] if i % 3 == 0 else ''}B{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(len(BIBLE_BOOKS))
    ]
    lines = [f"{a}{c}:{v} Verse {v} of chapter {c}." for a in abbreviations for c in (1, 2) for v in (1, 2)]
    docs = bible_documents("\n".join(lines) + "\n")
    assert [t for t, _ in docs] == [f"KJV: {b}" for b in BIBLE_BOOKS]
    assert docs[0][1] == "Genesis\n\nVerse 1 of chapter 1.\nVerse 2 of chapter 1.\n\nVerse 1 of chapter 2.\nVerse 2 of chapter 2."
    with pytest.raises(DataNotFoundError, match="books"):
        bible_documents("\n".join(lines[:8]))


# ------------------------------------------------------------------ online corpora (offline)
def test_detokenizers():
    assert wikitext_detokenizer(" = Valkyria Chronicles = \n") == " = Valkyria Chronicles =\n"
    assert (
        wikitext_detokenizer("the 1 @,@ 000 @-@ year ( see below ) , it 's 3 @.@ 5 N km")
        == "the 1,000-year (see below), it's 3.5 1 km"
    )
    assert wikitext_detokenizer('= = Plot = = \n He said " hello " . ') == '== Plot ==\nHe said "hello". '
    assert ptb_detokenizer("he does n't know the company 's <unk> N N \\/ share") == "he doesn't know the company's ? 1 1 / share"
    assert ptb_detokenizer("costs $ N a share") == "costs $1 a share"
    assert lm1b_detokenizer("I 'm at http : / / x.com , ( really ) !") == "I'm at http://x.com, (really)!"
    assert lm1b_detokenizer('He said " yes " ; she paid $ 5 .') == 'He said "yes"; she paid $5.'
    assert lambada_detokenizer("  \u201cHi,\u201d she said.  ") == '\n"Hi," she said.'
    assert {k: v[0][:3] for k, v in text8_splits("abcdefghij", train=6, val=2).items()} == {
        "train": "abc",
        "val": "gh",
        "test": "ij",
    }


WIKI_RECORDS = {
    "train": [{"text": f" = Article {i} = \n"} for i in range(3)]
    + [{"text": " 1 @,@ 000 people ( about ) . \n"}] * 30
    + [{"text": " The 3 @.@ 5 N mile walk , it 's over . \n"}],
    "validation": [{"text": " The 3 @.@ 5 N mile walk . \n"}] * 8,
    "test": [{"text": " it 's over . \n"}] * 8,
}


def fake_hub(records):
    calls = []

    def load(path, config, split):
        calls.append((path, config, split))
        return records[split]

    return load, calls


def test_records_become_detokenised_documents_in_the_bin(tmp_path, monkeypatch):
    monkeypatch.setattr(text_corpora, "internet_reachable", lambda *a: True)
    load, calls = fake_hub(WIKI_RECORDS)
    spec = corpora.WikiText2(load=load)
    meta = build_corpus("wikitext2", ["char"], tmp_path, spec=spec)["char"]
    assert set(calls) == {("Salesforce/wikitext", "wikitext-2-raw-v1", s) for s in ("train", "validation", "test")}
    assert {s: c["documents"] for s, c in meta["splits"].items()} == {"train": 34, "val": 8, "test": 8}
    tok = CharTokenizer(meta["chars"])
    val = tok.decode(read_tokens(corpus_dir(tmp_path, "wikitext2", "char") / "val.bin").tolist())
    assert val == "<|endoftext|>".join([" The 3.5 1 mile walk.\n"] * 8) + "<|endoftext|>"
    assert (
        meta["hf_path"] == "Salesforce/wikitext"
        and "wikitext_detokenizer" in (corpus_dir(tmp_path, "wikitext2", "char") / "SOURCE.txt").read_text()
    )
    assert build_corpus("wikitext2", ["char"], tmp_path, spec=spec)["char"] == meta and len(calls) == 3  # built once


def test_records_from_an_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = datasets.Dataset.from_dict({"sentence": ["a b n't c", "d 's e"]})
    assert list(RecordTexts(records, "sentence", ptb_detokenizer)) == ["a bn't c", "d's e"]
    meta = text_corpora.write_corpus(
        tmp_path / "ptb", "ptb", {"train": RecordTexts(records, "sentence", ptb_detokenizer)}, "char", tmp_path
    )
    assert meta["splits"]["train"] == {"tokens": 8 + 5 + 2, "documents": 2, "skipped_chars": 0}


def test_missing_corpus_names_make_data_text(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "internet_reachable", lambda *a: False)
    for corpus in ("classics", "wikitext103"):
        dm = TextDataModule(root=tmp_path, corpus=corpus, tokenizer="gpt2")
        with pytest.raises(DataNotFoundError, match=rf"`make data-text CORPUS={corpus}`"):
            dm.prepare_data()
        with pytest.raises(DataNotFoundError, match="make data-text"):
            _ = dm.vocab_size


def test_online_corpus_is_built_on_first_use_when_reachable(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "internet_reachable", lambda *a: True)
    monkeypatch.setattr(text_corpora, "internet_reachable", lambda *a: True)
    load, calls = fake_hub(WIKI_RECORDS)
    monkeypatch.setattr(corpora, "hf_load_dataset", load)
    dm = TextDataModule(root=tmp_path, corpus="wikitext2", tokenizer="char", length=16, batch_size=4)
    dm.prepare_data()
    assert len(calls) == 3 and on_ranks(dm, 1, 0).vocab_size == len(read_meta(dm.corpus_dir)["chars"]) + 1


def test_make_data_text_builds_an_offline_corpus_once(tmp_path, monkeypatch, capsys):
    from tools.data import text as prepare_text

    calls = []

    def documents(workdir):
        calls.append(workdir)
        return {"train": ["abc", "cab"], "val": ["ab"], "test": ["ca"]}, {}, "package copies (faked)"

    monkeypatch.setitem(prepare_text.OFFLINE_BUILDERS, "classics", documents)
    argv = ["classics", "--tokenizer", "char", "--root", str(tmp_path)]
    assert prepare_text.main(argv) == 0 and prepare_text.main(argv) == 0 and len(calls) == 1
    assert "char vocab 4 eos 3; train: 8 tokens / 2 docs" in capsys.readouterr().out


def test_text_a_user_types_never_loses_characters_silently():
    """prefix / suffix / infill: characters the char tokenizer cannot encode are one error naming the key
    and the characters; commas, quotes and known characters pass."""
    from omegaconf import OmegaConf

    from mixlab.core.errors import ConfigError
    from mixlab.data.text_tokenizers import CharTokenizer
    from mixlab.sedd.generate import encode_fixed

    tok = CharTokenizer("Helo, wrd\"'")
    assert tok.unknown_characters("Hé日llo é") == ["é", "日"]
    fixed = encode_fixed(tok, OmegaConf.create({"prefix": 'Hello, "world"', "suffix": None, "infill": None}))
    assert tok.decode(fixed["prefix"]) == 'Hello, "world"'
    with pytest.raises(ConfigError, match=r"^suffix: characters outside .* 'é' '日'"):
        encode_fixed(tok, OmegaConf.create({"prefix": None, "suffix": "Hé日", "infill": None}))
    with pytest.raises(ConfigError, match=r"^infill: characters outside .* 'é'"):
        encode_fixed(tok, OmegaConf.create({"prefix": None, "suffix": None, "infill": [[3, "é"]]}))
