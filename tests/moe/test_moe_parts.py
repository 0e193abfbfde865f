"""MoE classifier units: seed losses, gate, parameter averaging, loaders, errors."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mixlab.core.config import build
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.data.image_sources import CIFAR100Source, ImageFolderSource
from mixlab.data.images import carve_validation, channel_stats, normalise, task_classes
from mixlab.moe.init import average_state_dicts, init_moe_from_submodels
from mixlab.moe.losses import balance_loss, diversity_loss, gate_entropy
from mixlab.moe.net import GatingNetwork, MoEClassifier, SafeBatchNorm1d, SubModel

WIDTHS = (4, 8, 8, 16)


# ----------------------------------------------------------------------------- losses
def test_diversity_zero_for_one_hot_and_maximal_for_uniform():
    one_hot = torch.eye(3).repeat(4, 1)  # 12 samples, each on one expert
    assert diversity_loss(one_hot) == 0
    uniform = torch.full((12, 3), 1 / 3)
    assert torch.isclose(diversity_loss(uniform), torch.tensor(12 * (1 - 1 / 3)))
    random = torch.softmax(torch.randn(200, 12, 3) * 3, dim=-1)
    assert all(diversity_loss(g) < diversity_loss(uniform) for g in random)


def test_balance_zero_for_balanced_usage():
    assert balance_loss(torch.eye(3).repeat(4, 1)) == 0
    assert balance_loss(torch.full((5, 3), 1 / 3)).abs() < 1e-12
    assert balance_loss(torch.tensor([[1.0, 0.0, 0.0]] * 4)) > 0  # all on expert 0


def test_losses_match_hand_computed_values():
    g = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    # sum_i sum_{j!=k} g_ij g_ik: row 1: 2*0.25 = 0.5; row 2: 2*(0.06 + 0.10 + 0.15) = 0.62
    assert torch.isclose(diversity_loss(g), torch.tensor(1.12, dtype=torch.float64))
    # mean gates (0.35, 0.40, 0.25) vs 1/3
    expected = (1 / 3 - 0.35) ** 2 + (1 / 3 - 0.40) ** 2 + (1 / 3 - 0.25) ** 2
    assert torch.isclose(balance_loss(g), torch.tensor(expected, dtype=torch.float64))


# ------------------------------------------------------------------------------ gate
def test_gate_noise_only_in_training():
    torch.manual_seed(0)
    gate = GatingNetwork(16, 3, hidden=8, feature_dim=8, dropout=0.0, noise_std=0.1)
    x = torch.randn(6, 16)
    gate.train()
    a, _ = gate(x)
    b, _ = gate(x)
    assert not torch.allclose(a, b)  # noise differs between calls
    gate.noise_std = 0.0
    torch.testing.assert_close(gate(x)[0], gate(x)[0])  # no dropout, no noise: deterministic
    gate.noise_std = 0.1
    gate.eval()
    torch.testing.assert_close(gate(x)[0], gate(x)[0])
    torch.testing.assert_close(gate(x)[0].sum(1), torch.ones(6))


def test_lower_temperature_gives_sharper_gates():
    torch.manual_seed(0)
    gate = GatingNetwork(16, 3, hidden=8, feature_dim=8).eval()
    with torch.no_grad():
        gate.gate_net[-1].weight.mul_(100)  # logits of a useful scale
    x = torch.randn(32, 16)
    entropies = []
    for t in (4.0, 2.0, 1.0, 0.5):
        gate.temperature.fill_(t)
        with torch.no_grad():
            entropies.append(float(gate_entropy(gate(x)[0])))
    assert entropies == sorted(entropies, reverse=True) and entropies[0] > entropies[-1] + 0.1
    assert "temperature" in dict(gate.named_buffers())  # saved in the checkpoint


def test_batchnorm_gate_accepts_a_training_batch_of_one():
    bn = SafeBatchNorm1d(4).train()
    assert torch.isfinite(bn(torch.randn(1, 4))).all()
    moe = MoEClassifier(5, 3, WIDTHS, gate_hidden=8, gate_features=8).train()
    logits, gates = moe(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 5) and gates.shape == (1, 3)


def test_num_experts_below_one_is_an_argument_error():
    with pytest.raises(ArgumentError, match="^num_experts: must be >= 1, got 0"):
        MoEClassifier(5, 0, WIDTHS)
    with pytest.raises(ArgumentError, match="^num_experts: must be an integer, got True"):
        MoEClassifier(5, True, WIDTHS)
    with pytest.raises(ArgumentError, match="^widths: "):
        MoEClassifier(5, 3, (4, 8, 8))


# ------------------------------------------------------------------------ averaging
def _save_submodel(path, seed, widths=WIDTHS):
    torch.manual_seed(seed)
    net = SubModel(5, widths)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_()
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return net


def test_parameter_average_of_three_is_the_elementwise_mean(tmp_path):
    nets = [_save_submodel(tmp_path / f"s{i}.ckpt", i) for i in range(3)]
    states = [dict(n.named_parameters()) for n in nets]
    avg = average_state_dicts([{k: v.detach() for k, v in s.items()} for s in states])
    for k in states[0]:
        torch.testing.assert_close(avg[k], (states[0][k] + states[1][k] + states[2][k]).detach() / 3)

    moe = MoEClassifier(15, 3, WIDTHS, gate_hidden=8, gate_features=8)
    init_moe_from_submodels(moe, [tmp_path / f"s{i}.ckpt" for i in range(3)])
    for name, p in moe.extractor.named_parameters():
        expected = sum(dict(n.extractor.named_parameters())[name] for n in nets) / 3
        torch.testing.assert_close(p, expected)
    for name, buf in moe.extractor.named_buffers():  # BN statistics reset (documented)
        if name.endswith("running_mean"):
            assert buf.abs().sum() == 0
        if name.endswith("running_var"):
            assert torch.all(buf == 1)
    for i, net in enumerate(nets):  # expert i <- sub-model i, statistics included
        for k, v in net.expert.state_dict().items():
            torch.testing.assert_close(moe.experts[i].state_dict()[k], v)


def test_init_from_count_and_shape_mismatch_name_the_key(tmp_path):
    paths = [tmp_path / f"s{i}.ckpt" for i in range(3)]
    for i, p in enumerate(paths):
        _save_submodel(p, i)
    moe = MoEClassifier(15, 3, WIDTHS, gate_hidden=8, gate_features=8)
    with pytest.raises(ArgumentError, match="^init_from: got 2 checkpoints for 3 experts"):
        init_moe_from_submodels(moe, paths[:2])
    _save_submodel(paths[2], 2, widths=(4, 8, 8, 32))
    with pytest.raises(ArgumentError, match="^init_from: shape mismatch"):
        init_moe_from_submodels(moe, paths)
    with pytest.raises(ArgumentError, match="^init_from: .*does not exist"):
        init_moe_from_submodels(moe, paths[:2] + [tmp_path / "missing.ckpt"])
    # built from a config, the same errors name the full key: at construction (count, unreadable
    # file) or when the weights load, in setup("fit")
    node = {
        "_target_": "mixlab.moe.system.MoEClassifierSystem",
        "num_classes": 15,
        "init_from": [str(p) for p in paths[:2]],
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True},
        "net": {
            "_target_": "mixlab.moe.net.MoEClassifier",
            "num_classes": 15,
            "widths": list(WIDTHS),
            "gate_hidden": 8,
            "gate_features": 8,
        },
    }
    with pytest.raises(ConfigError, match="^model.init_from: got 2 checkpoints for 3 experts"):
        build(OmegaConf.create({"model": node}).model)
    node["init_from"] = [str(p) for p in paths]
    system = build(OmegaConf.create({"model": node}).model)
    with pytest.raises(ConfigError, match="^model.init_from: shape mismatch"):
        system.setup("fit")
    node["net"]["num_experts"] = 0
    with pytest.raises(ConfigError, match="^model.net.num_experts: must be >= 1, got 0"):
        build(OmegaConf.create({"model": node}).model)


# ---------------------------------------------------------------------- data / tasks
SUBSETS = [["apple", "pear"], ["rose", "tulip"], ["pear", "oak_tree"]]


def test_task_classes_and_errors():
    assert task_classes(SUBSETS, 2) == ["rose", "tulip"]
    assert task_classes(SUBSETS, None) == ["apple", "pear", "rose", "tulip", "oak_tree"]  # shared class once
    for bad in (0, 4, True, "1"):
        with pytest.raises(ArgumentError, match="^subset:"):
            task_classes(SUBSETS, bad)


def test_validation_split_is_stratified_and_disjoint_and_stats_come_from_train():
    labels = np.repeat(np.arange(3), 20)
    tr, va = carve_validation(labels, 0.1, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 60
    assert np.bincount(labels[va]).tolist() == [2, 2, 2]
    images = np.random.default_rng(0).integers(0, 256, (60, 4, 4, 3), dtype=np.uint8)
    images[va] = 255  # val is very different: stats must not see it
    mean, std = channel_stats(images[tr])
    x = normalise(images[tr], mean, std)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def write_cifar100(root, names, per_class=3, seed=0):
    """torchvision's cifar-100-python layout: meta, train, test pickles (data [N,3072] u8)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["x"]}, f)
    for split in ("train", "test"):
        labels = np.repeat(np.arange(len(names)), per_class)
        data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        data[:, 0] = (labels * 10)[:, None, None]  # red channel encodes the label
        data[:, 1] = rng.integers(0, 256, (len(labels), 32, 32))
        with open(folder / split, "wb") as f:
            pickle.dump(
                {"data": data.reshape(len(labels), -1), "fine_labels": labels.tolist(), "coarse_labels": [0] * len(labels)}, f
            )


def test_cifar100_loader_reads_the_pickle_layout(tmp_path):
    names = ["apple", "oak_tree", "pear", "rose", "tulip"]
    write_cifar100(tmp_path, names)
    images, labels = CIFAR100Source(tmp_path, download=False).load("train", ["rose", "apple"])
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert all(images[i, 5, 5, 0] == (30 if labels[i] == 0 else 0) for i in range(6))  # HWC, relabelled
    with pytest.raises(ConfigError, match="^data.subsets: unknown class name 'willow'"):
        CIFAR100Source(tmp_path, download=False).load("test", ["willow"])


def test_imagefolder_loader_reads_class_folders(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c, name in enumerate(["zebra", "lynx", "hyena"]):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 40, 3), 50 * c + i, dtype=np.uint8)).save(tmp_path / split / name / f"{i}.png")
    images, labels = ImageFolderSource(tmp_path, image_size=16).load("test", ["hyena", "zebra"])
    assert images.shape == (4, 16, 16, 3) and labels.tolist() == [0, 0, 1, 1]
    assert images[0, 0, 0, 0] == 100 and images[2, 0, 0, 0] == 0
    with pytest.raises(ConfigError, match="^data.subsets: unknown class name 'patas'"):
        ImageFolderSource(tmp_path).load("train", ["patas"])


def test_standin_maps_a_class_name_to_the_same_images_in_a_subset_and_in_the_union(tmp_path):
    from mixlab.data.image_sources import DigitFashionStandIn

    write_tiny_standin(tmp_path, per_class=4)
    src, vocab = DigitFashionStandIn(tmp_path, per_class={"train": 4, "test": 4}), ["a", "b", "c", "d", "e", "f"]
    union, union_labels = src.load("train", vocab, vocabulary=vocab)
    sub, sub_labels = src.load("train", ["d", "e"], vocabulary=vocab)
    assert sub_labels.tolist() == [0] * 4 + [1] * 4
    assert union.shape[1:] == (32, 32, 3) and len(union) == 24

    def blob_centre(images):  # the tiny MNIST/Fashion blobs sit at a class-dependent place
        dev = np.abs(images.astype(float) - images[:, :1, :1].astype(float)).mean(-1).mean(0)
        return np.unravel_index(dev.argmax(), dev.shape)

    # class "d" is vocabulary entry 3 (MNIST digit 3, blob at row 6+2*3, col 6, +2 padding)
    assert blob_centre(sub[:4]) == blob_centre(union[union_labels == 3]) == (14, 8)
    assert blob_centre(sub[4:]) == blob_centre(union[union_labels == 4]) == (16, 8)


def write_tiny_standin(root: Path, per_class: int = 48, seed: int = 0) -> Path:
    """MNIST and Fashion-MNIST IDX files with `per_class` blob images per class and split."""
    from mixlab.data.sources import write_idx

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    for name in ("MNIST", "FashionMNIST"):
        raw = root / name / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for split in ("train", "t10k"):
            labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
            cy, cx = 6 + 2 * (labels % 5), 6 + 8 * (labels // 5) + (name == "FashionMNIST") * 4
            img = 255 * np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 8)
            img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
            write_idx(raw / f"{split}-images-idx3-ubyte", img)
            write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root
