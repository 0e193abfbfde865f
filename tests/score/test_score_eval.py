"""evaluate.py on a smoke checkpoint: both protocols, files written, clear errors."""

from pathlib import Path

import pytest
from support import compose_eval

from mixlab.core.errors import ConfigError
from mixlab.score.evaluate import evaluate


@pytest.fixture(scope="module")
def smoke_ckpt(smoke_runs):
    return Path(smoke_runs.run("baseline")["last_ckpt"])


def eval_cfg(*overrides, data_dir, weights_dir, out_dir):
    return compose_eval("evaluator=fid", *overrides, data_dir=data_dir, weights_dir=weights_dir, out_dir=out_dir)


def test_evaluate_writes_metrics_and_grid_for_both_protocols(smoke_ckpt, data_dir, weights_dir, tmp_path):
    cfg = eval_cfg(
        f"ckpt={smoke_ckpt}",
        "n=24",
        "steps=3",
        "batch_size=16",
        "real_reference=true",
        data_dir=data_dir,
        weights_dir=weights_dir,
        out_dir=tmp_path,
    )
    result = evaluate(cfg)
    assert Path(result["metrics_json"]).is_file() and Path(result["sample_grid"]).is_file()
    assert result["nfe"] == 5 and result["n"] == 24
    for protocol in ("inception", "classifier"):
        m = result[protocol]
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["fid"] > 0
    # a near-untrained smoke model is far from the data; real train images are much closer
    assert result["inception"]["fid"] > 50
    assert result["inception_real_reference"]["fid"] < result["inception"]["fid"] / 2
    assert (data_dir / "stats").is_dir()  # real features cached for the next call


def test_evaluate_is_deterministic_under_a_seed(smoke_ckpt, data_dir, weights_dir, tmp_path):
    results = [
        evaluate(
            eval_cfg(
                f"ckpt={smoke_ckpt}",
                "n=16",
                "steps=2",
                "protocols=[classifier]",
                "kid=false",
                data_dir=data_dir,
                weights_dir=weights_dir,
                out_dir=tmp_path / str(i),
            )
        )
        for i in range(2)
    ]
    assert results[0]["classifier"] == results[1]["classifier"]


@pytest.mark.parametrize(
    "override,key",
    [
        ("solver=rk4", "solver"),
        ("steps=0", "steps"),
        ("n=-5", "n"),
        ("protocols=[clip]", "protocols"),
        ("n=100000", "n"),
    ],
)
def test_evaluate_bad_input_names_the_key(smoke_ckpt, data_dir, weights_dir, tmp_path, override, key):
    cfg = eval_cfg(f"ckpt={smoke_ckpt}", override, data_dir=data_dir, weights_dir=weights_dir, out_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        evaluate(cfg)
    assert str(err.value).startswith(f"{key}:")


def test_evaluate_missing_checkpoint(data_dir, weights_dir, tmp_path):
    cfg = eval_cfg("ckpt=/no/such.ckpt", data_dir=data_dir, weights_dir=weights_dir, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="ckpt: checkpoint file /no/such.ckpt does not exist"):
        evaluate(cfg)
