"""tools/samplers/equal_budget (make compare-samplers): the mean ± std over seeds, the reference
settings arm's overrides, and the mixlab arm on a tiny config (no reference checkout needed)."""

import math

import numpy as np
import pytest
import torch

from tools.samplers import equal_budget as eb
from tools.samplers.versus_reference import ROWS


def _run(arm, seed, values):
    """A run whose evaluation at iteration i has |Δlog Ẑ| = values[i] (other metrics derived)."""
    return {
        "arm": arm,
        "seed": seed,
        "evals": [
            {
                "iteration": it,
                "abs_delta_log_z": v,
                "abs_delta_log_z_rw": v / 10,
                "w2": None,
                "modes_hit": 25,
                "train_seconds": it,
            }
            for it, v in values.items()
        ],
    }


def test_aggregate_is_the_mean_and_sample_std_over_seeds_at_the_shared_iterations():
    runs = [
        _run("a", 0, {0: 1.0, 10: 2.0, 20: 0.5}),
        _run("a", 1, {0: 3.0, 10: 2.0}),  # stopped early: iteration 20 is not shared
        _run("b", 0, {0: 4.0, 10: 1.0}),
    ]
    summary = eb.aggregate(runs)
    assert list(summary) == ["a", "b"]
    assert [r["iteration"] for r in summary["a"]] == [0, 10]
    first = summary["a"][0]["abs_delta_log_z"]
    assert first["mean"] == 2.0 and first["std"] == pytest.approx(math.sqrt(2.0)) and first["values"] == [1.0, 3.0]
    assert summary["a"][1]["abs_delta_log_z"]["std"] == 0.0
    assert summary["a"][0]["abs_delta_log_z_rw"]["mean"] == pytest.approx(0.2)
    assert math.isnan(summary["a"][0]["w2"]["mean"])  # not computed counts as NaN
    assert summary["b"][0]["abs_delta_log_z"]["std"] is None  # one seed: no spread
    table = eb.table(summary, iterations=[10]).splitlines()
    assert table[0].startswith("| arm | iteration | \\|Δlog Ẑ\\| |")
    assert table[2] == "| a | 10 | 2.000 ± 0.000 | 0.200 ± 0.000 | nan ± nan | 25.0 ± 0.0 | 10 ± 0 |"
    assert table[3] == "| b | 10 | 1.000 | 0.100 | nan | 25.0 | 10 |"


def test_reference_settings_follow_the_rows_flags():
    overrides = eb.reference_settings(ROWS["tb_expl_ls_gmm25"][1])
    assert "model.local_search.rule._target_=mixlab.samplers.local_search.ReferenceStepSize" in overrides
    assert "model.local_search.step_size=0.1" in overrides  # the row's --ld_step
    assert "model.local_search.burn_in=101" in overrides  # it keeps the steps i > 100
    assert {
        "model.local_search.carry_step_size=false",
        "model.buffer.draws=reference",
        "model.buffer.first_add_twice=true",
    } <= set(overrides)
    fixed = eb.reference_settings({"ld_schedule": False})
    assert "model.local_search.rule._target_=mixlab.samplers.local_search.FixedStepSize" in fixed
    assert "model.local_search.step_size=0.001" in fixed  # the reference's default --ld_step
    assert eb.arm_overrides("mixlab") == ["experiment=sampler_gmm25_tb_expl_ls"]


class Recording(eb.Evaluator):
    def __init__(self, n):
        super().__init__(n)
        self.seen = []

    def __call__(self, x, log_w):
        self.seen.append((x.clone(), log_w.clone()))
        return super().__call__(x, log_w)


def test_mixlab_arm_evaluates_at_0_every_and_the_end_and_starts_from_brownian_motion(tmp_path):
    tiny = ["model.batch_size=16", "model.T=5", "model.local_search.batch_size=8", "model.local_search.steps=4"]
    overrides = [*eb.arm_overrides("mixlab-reference-settings"), *tiny, "model.local_search.burn_in=2"]
    evaluate = Recording(64)
    run = eb.run_mixlab(overrides, 0, iterations=3, every=2, evaluate=evaluate, work=tmp_path)
    evals = run["evals"]
    assert [e["iteration"] for e in evals] == [0, 2, 3]
    assert evals[0]["train_seconds"] == 0.0 < evals[1]["train_seconds"] <= evals[2]["train_seconds"] == run["train_seconds"]
    assert evals[0]["log_z_learned"] == 0.0 != evals[2]["log_z_learned"]
    # the zero-initialised policy is Brownian motion with variance sigma2 = 5: log w = log R(x) - log N(x; 0, 5 I)
    x, log_w = evaluate.seen[0]
    closed = evaluate.energy.log_reward(x).double() + 0.5 * (x.double() ** 2).sum(1) / 5 + math.log(2 * math.pi * 5)
    torch.testing.assert_close(log_w, closed, atol=1e-4, rtol=0)
    assert evals[0]["abs_delta_log_z"] == pytest.approx(abs(float(closed.mean())))
    assert not torch.allclose(evaluate.seen[2][1], closed, atol=1e-4)  # trained
    # local search ran once (before iteration 1) from the reference's 0.1 with its x1.01 / x0.99 rule
    assert 0.1 * 0.99**4 - 1e-12 <= evals[-1]["ls_step_size"] <= 0.1 * 1.01**4 + 1e-12
    assert np.isfinite([evals[-1][k] for k in ("w2", "abs_delta_log_z_rw")]).all() and 0 < evals[-1]["modes_hit"] <= 25
