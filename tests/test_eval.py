"""evaluate.py on a smoke checkpoint: both protocols, files written, clear errors."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from mixlab.data.sources import load_split
from mixlab.core.errors import ConfigError
from mixlab.score.evaluate import evaluate
from mixlab.data.mnist import to_model_range
from mixlab.metrics.classifier import save_classifier, train_classifier
from mixlab.core.pipeline import train

ROOT = Path(__file__).resolve().parents[1]
INCEPTION = ROOT / "data" / "weights" / "inception_v3_fid.pth"


@pytest.fixture(scope="module")
def smoke_ckpt(tiny_data, tmp_path_factory):
    from conftest import compose_train

    out = tmp_path_factory.mktemp("evalrun")
    summary = train(compose_train(["experiment=baseline", "debug=smoke"], tiny_data, out / "run"))
    return Path(summary["last_ckpt"])


@pytest.fixture(scope="module")
def weights_dir(tiny_data, tmp_path_factory):
    """A weights dir with the real FID Inception (linked) and a 1-epoch classifier on tiny data."""
    d = tmp_path_factory.mktemp("weights")
    if INCEPTION.is_file():
        (d / INCEPTION.name).symlink_to(INCEPTION)
    (xtr, ytr), (xte, yte) = (load_split(tiny_data, "mnist", s) for s in ("train", "test"))
    model, _ = train_classifier(to_model_range(xtr), torch.from_numpy(ytr.copy()), to_model_range(xte), torch.from_numpy(yte.copy()), epochs=1)
    save_classifier(model, d / "mnist_lenet.pt", {"epochs": 1})
    return d


def eval_cfg(*overrides, data_dir, weights_dir, out_dir):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval.yaml", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.data_dir, cfg.paths.weights_dir, cfg.out_dir = str(data_dir), str(weights_dir), str(out_dir)
    return cfg


def test_evaluate_writes_metrics_and_grid_for_both_protocols(smoke_ckpt, tiny_data, weights_dir, tmp_path):
    if not INCEPTION.is_file():
        pytest.skip("FID Inception weights missing: `make weights` (make test runs it)")
    cfg = eval_cfg(f"ckpt={smoke_ckpt}", "n=24", "steps=3", "batch_size=16", "real_reference=true",
                   data_dir=tiny_data, weights_dir=weights_dir, out_dir=tmp_path)
    result = evaluate(cfg)
    assert Path(result["metrics_json"]).is_file() and Path(result["sample_grid"]).is_file()
    assert result["nfe"] == 5 and result["n"] == 24
    for protocol in ("inception", "classifier"):
        m = result[protocol]
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["fid"] > 0
    # a near-untrained smoke model is far from the data; real train images are much closer
    assert result["inception"]["fid"] > 50
    assert result["inception_real_reference"]["fid"] < result["inception"]["fid"] / 2
    assert (tiny_data / "stats").is_dir()  # real features cached for the next call


def test_evaluate_is_deterministic_under_a_seed(smoke_ckpt, tiny_data, weights_dir, tmp_path):
    results = [evaluate(eval_cfg(f"ckpt={smoke_ckpt}", "n=16", "steps=2", "protocols=[classifier]", "kid=false",
                                 data_dir=tiny_data, weights_dir=weights_dir, out_dir=tmp_path / str(i)))
               for i in range(2)]
    assert results[0]["classifier"] == results[1]["classifier"]


@pytest.mark.parametrize("override,key", [
    ("solver=rk4", "solver"), ("steps=0", "steps"), ("n=-5", "n"), ("protocols=[clip]", "protocols"),
    ("n=100000", "n"),
])
def test_evaluate_bad_input_names_the_key(smoke_ckpt, tiny_data, weights_dir, tmp_path, override, key):
    cfg = eval_cfg(f"ckpt={smoke_ckpt}", override, data_dir=tiny_data, weights_dir=weights_dir, out_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        evaluate(cfg)
    assert str(err.value).startswith(f"{key}:")


def test_evaluate_missing_checkpoint(tiny_data, weights_dir, tmp_path):
    cfg = eval_cfg("ckpt=/no/such.ckpt", data_dir=tiny_data, weights_dir=weights_dir, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="ckpt: checkpoint file /no/such.ckpt does not exist"):
        evaluate(cfg)
