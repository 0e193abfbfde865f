"""Data manifests: the files `make data*` writes are checked before training reads them.

Each kind of prepared data (text token memmaps, MNIST-style IDX files) is written through the
writers the make targets use, then truncated (odd and even sizes), corrupted in place (same
size) or stripped of its manifest; every damage is one line naming the file and the make
command, a file without a manifest is accepted unless it is obviously broken.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from mixlab.core.errors import DataNotFoundError, MixlabError
from mixlab.data import manifest, sources
from mixlab.data.image_sources import DigitFashionStandIn
from mixlab.data.images import ImageTaskDataModule
from mixlab.data.mnist import MNISTDataModule
from mixlab.data.text import TextDataModule
from mixlab.data.text_corpora import (
    build_corpus,
    check_split,
    corpus_dir,
    corpus_problem,
    ensure_manifest,
    read_tokens,
    write_corpus,
)
from tools.data import images as fetch_images

TEXT_COMMAND = "make data-text CORPUS=classics TOKENIZERS=char"
ROOT = Path("data")  # relative, as `make` uses it: the errors then name the make targets


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Runs in tmp_path (data/ is tmp_path/data); no network, no download."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "internet_reachable", lambda *a, **k: False)

    def no_download(*a, **k):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(sources, "torchvision_download", no_download)


def truncate(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


def corrupt(path: Path, at: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def damage(path: Path, how: str) -> None:
    {"odd": lambda: truncate(path, 1), "even": lambda: truncate(path, 2), "corrupt": lambda: corrupt(path)}[how]()


def one_line(e: pytest.ExceptionInfo, path: Path, command: str, what: str) -> str:
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, MixlabError), message
    assert message.startswith(f"{path}: ") and f"`{command}`" in message and what in message, message
    return message


# ------------------------------------------------------------------------------------- text
def tiny_texts() -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    words = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog")
    return {
        split: [f"{split}{i}: " + " ".join(rng.choice(words, 30)) + "." for i in range(n)]
        for split, n in (("train", 20), ("val", 4), ("test", 4))
    }


def write_tiny_corpus(root: Path) -> None:
    """classics-char under ``root`` through ``write_corpus`` (what `make data-text` runs)."""
    write_corpus(corpus_dir(root, "classics", "char"), "classics", tiny_texts(), "char", root, source="tiny test corpus")


@pytest.fixture
def corpus():
    write_tiny_corpus(ROOT)
    return corpus_dir(ROOT, "classics", "char")


def test_text_manifest_lists_each_split(corpus):
    files = json.loads((corpus / "manifest.json").read_text())["files"]
    assert sorted(files) == ["test.bin", "train.bin", "val.bin"]
    entry = files["train.bin"]
    assert entry["dtype"] == "uint16" and entry["bytes"] == 2 * entry["elements"] == (corpus / "train.bin").stat().st_size
    assert entry["elements"] == len(read_tokens(corpus / "train.bin")) and entry["sha256_of"] == "file"
    assert json.loads((corpus / "manifest.json").read_text())["rebuild"] == TEXT_COMMAND
    assert check_split(ROOT, "classics", "char", "train") == corpus / "train.bin"


@pytest.mark.parametrize(
    "how, what", [("odd", "the manifest says"), ("even", "the manifest says"), ("corrupt", "sha256 differs from the manifest")]
)
def test_damaged_text_split_is_one_line(corpus, how, what):
    damage(corpus / "train.bin", how)
    with pytest.raises(manifest.CorruptDataError) as e:
        check_split(ROOT, "classics", "char", "train")
    one_line(e, corpus / "train.bin", TEXT_COMMAND, what)
    check_split(ROOT, "classics", "char", "val")  # the other splits are fine


@pytest.mark.parametrize("how, what", [("odd", "not a multiple of the uint16 size (2 bytes)"), ("even", "meta.json says")])
def test_text_without_manifest_still_rejects_obvious_truncation(corpus, how, what):
    (corpus / "manifest.json").unlink()
    damage(corpus / "train.bin", how)
    with pytest.raises(manifest.CorruptDataError) as e:
        check_split(ROOT, "classics", "char", "train")
    one_line(e, corpus / "train.bin", TEXT_COMMAND, what)


def test_text_without_manifest_is_accepted(corpus):
    (corpus / "manifest.json").unlink()
    corrupt(corpus / "train.bin")  # nothing to compare with: accepted as before
    assert check_split(ROOT, "classics", "char", "train").is_file()
    (corpus / "meta.json").write_text("{}")  # no token counts either (hand-made folder)
    assert check_split(ROOT, "classics", "char", "train").is_file()


def test_unreadable_manifest_and_missing_split(corpus):
    (corpus / "manifest.json").write_text("{not json")
    with pytest.raises(manifest.CorruptDataError) as e:
        check_split(ROOT, "classics", "char", "val")
    one_line(e, corpus / "val.bin", TEXT_COMMAND, "manifest.json beside it is unreadable")
    (corpus / "test.bin").unlink()
    with pytest.raises(DataNotFoundError) as e:
        check_split(ROOT, "classics", "char", "test")
    one_line(e, corpus / "test.bin", TEXT_COMMAND, "missing")


def test_big_memmap_hashes_its_ends(corpus, monkeypatch):
    monkeypatch.setattr(manifest, "WHOLE_FILE_HASH_MAX", 64)
    monkeypatch.setattr(manifest, "EDGE_BYTES", 16)
    write_tiny_corpus(ROOT)  # rewritten under the small limit
    assert json.loads((corpus / "manifest.json").read_text())["files"]["train.bin"]["sha256_of"] == "first and last MiB"
    corrupt(corpus / "train.bin", at=100)  # the middle: not covered
    check_split(ROOT, "classics", "char", "train")
    corrupt(corpus / "train.bin", at=-3)  # the end: covered
    with pytest.raises(manifest.CorruptDataError, match="sha256 \\(first and last MiB\\) differs"):
        check_split(ROOT, "classics", "char", "train")


def test_rebuild_command_rebuilds_a_damaged_corpus(corpus):
    texts = tiny_texts()
    calls = []

    def documents(workdir):
        calls.append(workdir)
        return texts, {}, "tiny"

    build_corpus("classics", ["char"], ROOT, documents=documents)
    assert calls == []  # intact: kept
    damage(corpus / "val.bin", "corrupt")
    assert corpus_problem(corpus).startswith("val.bin: sha256 differs")
    build_corpus("classics", ["char"], ROOT, documents=documents)
    assert len(calls) == 1 and corpus_problem(corpus) is None
    (corpus / "manifest.json").unlink()  # a folder built by an older version: kept, manifest added
    build_corpus("classics", ["char"], ROOT, documents=documents)
    assert ensure_manifest(ROOT, "classics", "char") and len(calls) == 1 and corpus_problem(corpus) is None
    assert not ensure_manifest(ROOT, "classics", "char")  # already there


def test_make_data_text_rebuilds_a_damaged_corpus(corpus, monkeypatch, capsys):
    from tools.data import text as prepare_text

    calls = []
    monkeypatch.setitem(prepare_text.OFFLINE_BUILDERS, "classics", lambda workdir: calls.append(1) or (tiny_texts(), {}, "tiny"))
    damage(corpus / "train.bin", "odd")
    assert prepare_text.main(["classics", "--tokenizer", "char", "--root", "data"]) == 0 and len(calls) == 1
    assert "train.bin: size" in capsys.readouterr().out and check_split(ROOT, "classics", "char", "train")


@pytest.mark.parametrize("how", ["odd", "even"])
def test_text_datamodule_stops_before_training(corpus, how):
    dm = TextDataModule(root=ROOT, corpus="classics", tokenizer="char", length=16, batch_size=4)
    damage(corpus / "val.bin", how)
    dm.prepare_data()
    with pytest.raises(manifest.CorruptDataError) as e:
        dm.setup("fit")
    one_line(e, corpus / "val.bin", TEXT_COMMAND, "the manifest says")


def test_text_command_outside_the_make_layout(tmp_path):
    write_tiny_corpus(tmp_path / "elsewhere")
    damage(corpus_dir(tmp_path / "elsewhere", "classics", "char") / "train.bin", "odd")
    with pytest.raises(
        manifest.CorruptDataError, match=r"`python -m tools.data.text classics --tokenizer char --root .*elsewhere`"
    ):
        check_split(tmp_path / "elsewhere", "classics", "char", "train")


# ----------------------------------------------------------------------------------- images
def write_images(root: Path, dataset: str = "mnist", n: int = 30, with_manifest: bool = True) -> Path:
    raw = sources.raw_dir(root, dataset)
    rng = np.random.default_rng(0)
    for split in sources.SPLIT_PREFIX:
        image_name, label_name = sources.idx_file_names(split)
        sources.write_idx(raw / image_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        sources.write_idx(raw / label_name, (np.arange(n) % 10).astype(np.uint8))
    if with_manifest:
        sources.write_manifest(root, dataset)  # what `make data` writes after installing
    return raw


def test_image_manifest_lists_the_idx_files():
    raw = write_images(ROOT)
    files = json.loads((raw / "manifest.json").read_text())["files"]
    assert files["train-images-idx3-ubyte"]["elements"] == 30 * 28 * 28 and files["t10k-labels-idx1-ubyte"]["elements"] == 30
    assert files["train-images-idx3-ubyte"]["bytes"] == 16 + 30 * 28 * 28 and files["train-images-idx3-ubyte"]["dtype"] == "uint8"
    assert len(sources.load_split(ROOT, "mnist", "train")[1]) == 30


@pytest.mark.parametrize("dataset, command", [("mnist", "make data"), ("fashion_mnist", "make data-fashion")])
@pytest.mark.parametrize(
    "how, what", [("odd", "the manifest says"), ("even", "the manifest says"), ("corrupt", "sha256 differs from the manifest")]
)
def test_damaged_idx_file_is_one_line(dataset, command, how, what):
    raw = write_images(ROOT, dataset)
    damage(raw / "t10k-images-idx3-ubyte", how)
    with pytest.raises(manifest.CorruptDataError) as e:
        sources.load_split(ROOT, dataset, "test")
    one_line(e, raw / "t10k-images-idx3-ubyte", command, what)


def test_idx_without_manifest():
    raw = write_images(ROOT, "fashion_mnist", with_manifest=False)
    corrupt(raw / "train-images-idx3-ubyte")  # a pixel changed: nothing to compare with, accepted
    assert len(sources.load_split(ROOT, "fashion_mnist", "train")[1]) == 30
    truncate(raw / "t10k-labels-idx1-ubyte", 2)  # the IDX header still catches a truncation
    with pytest.raises(sources.CorruptDataError) as e:
        sources.load_split(ROOT, "fashion_mnist", "test")
    assert "header says shape" in str(e.value) and "make data-fashion" in str(e.value) and "\n" not in str(e.value)


def test_make_data_fetches_a_damaged_install_again(monkeypatch):
    raw = write_images(ROOT)
    installs = []

    def offline_copy(root):
        installs.append(root)
        write_images(Path(root), with_manifest=False)
        return "tiny offline copy"

    monkeypatch.setitem(fetch_images.OFFLINE_FALLBACKS, "mnist", offline_copy)
    fetch_images.fetch("mnist", ROOT)
    assert installs == []  # intact: skipped
    damage(raw / "train-labels-idx1-ubyte", "corrupt")
    fetch_images.fetch("mnist", ROOT)
    assert len(installs) == 1 and fetch_images.damaged(ROOT, "mnist") is None
    (raw / "manifest.json").unlink()  # an install by an older version: skipped, manifest written
    fetch_images.fetch("mnist", ROOT)
    assert len(installs) == 1 and (raw / "manifest.json").is_file()


def test_image_datamodules_stop_before_training():
    raw = write_images(ROOT)
    damage(raw / "train-images-idx3-ubyte", "even")
    dm = MNISTDataModule(root=ROOT, dataset="mnist", batch_size=8)
    for step in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(manifest.CorruptDataError) as e:
            step()
        one_line(e, raw / "train-images-idx3-ubyte", "make data", "the manifest says")
    write_images(ROOT, "fashion_mnist")  # the MoE stand-in reads both data sets
    task = ImageTaskDataModule(
        DigitFashionStandIn(root=ROOT, per_class={"train": 2, "test": 2}), [["a", "b"], ["c"]], batch_size=2
    )
    with pytest.raises(manifest.CorruptDataError) as e:
        task.prepare_data()
    one_line(e, raw / "train-images-idx3-ubyte", "make data", "the manifest says")
