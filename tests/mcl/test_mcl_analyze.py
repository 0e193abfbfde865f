"""`make analyze` on a smoke MCL checkpoint: every figure written, statistics consistent."""

import numpy as np
import pytest
from support import compose_eval

from mixlab.core.errors import ConfigError
from tools.mcl.analysis import analyze, win_fractions_by_group

FIGURES = [
    "expert_vs_digit",
    "expert_vs_sigma",
    "multi_expert_grid",
    "trajectory",
    "strategy_comparison",
    "expert_usage_training",
    "training_curves",
]


def analyze_cfg(*overrides, data_dir, out_dir):
    return compose_eval("evaluator=mcl_analysis", *overrides, data_dir=data_dir, out_dir=out_dir)


def test_win_fractions_by_group_by_hand():
    winners = np.array([0, 0, 1, 2, 2, 2])
    digits = np.array([3, 3, 3, 5, 5, 7])
    m = win_fractions_by_group(winners, digits, num_experts=3, num_groups=10)
    assert m.shape == (3, 10)
    np.testing.assert_allclose(m[:, 3], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(m[:, 5], [0, 0, 1])
    np.testing.assert_allclose(m[:, 0], 0)  # no sample of digit 0: an empty column, not NaN


def test_analyze_writes_every_figure(smoke_runs, data_dir, tmp_path):
    ckpt = smoke_runs.run("mcl_k4")["last_ckpt"]
    stats = analyze(analyze_cfg(f"ckpt={ckpt}", "n=3", "steps=2", "num_eval_samples=40", data_dir=data_dir, out_dir=tmp_path))
    for name in FIGURES:
        assert (tmp_path / f"{name}.png").stat().st_size > 2000, name
    assert (tmp_path / "analysis.json").is_file()
    digit = np.array(stats["expert_vs_digit"])
    assert digit.shape == (4, 10)
    present = digit.sum(0) > 0
    np.testing.assert_allclose(digit[:, present].sum(0), 1.0)
    sigma = np.array(stats["expert_vs_sigma"]["fractions"])
    assert sigma.shape == (4, 20) and np.allclose(sigma[:, sigma.sum(0) > 0].sum(0), 1.0)
    with pytest.raises(ConfigError, match="^ckpt: .* is a ScoreDiffusion checkpoint, not an MCL one"):
        analyze(analyze_cfg(f"ckpt={smoke_runs.run('baseline')['last_ckpt']}", data_dir=data_dir, out_dir=tmp_path))
