"""The absorbing graph's reverse step on masked positions only (mixlab.sedd.absorbing_step): its
probabilities equal the float64 formulas of the predictors, its draws follow them, and rare tokens
are drawn as often as their weight says (the float32 draw of the reference code under-samples them)."""

import math

import pytest
import torch
from scipy import stats

from mixlab.sedd.absorbing_step import absorbing_probs, absorbing_update, block_sums, draw_from_blocks, row_weights
from mixlab.sedd.graphs import AbsorbingGraph
from mixlab.sedd.noise import LogLinearNoise
from mixlab.sedd.sampling import AnalyticPredictor, Denoiser, EulerPredictor

V = 7  # real tokens; MASK = V


def setting(seed: int = 0, batch: int = 3, length: int = 6, scale: float = 3.0):
    """Random log scores [B, L, V + 1] (the network's output), x with masked and unmasked positions."""
    g = torch.Generator().manual_seed(seed)
    log_score = scale * torch.randn(batch, length, V + 1, generator=g, dtype=torch.float64)
    x = torch.randint(0, V, (batch, length), generator=g)
    x[torch.rand(batch, length, generator=g) < 0.6] = V
    return log_score, x, (lambda xx, sigma_bar: log_score.float())


@pytest.mark.parametrize("predictor", [EulerPredictor(), AnalyticPredictor()])
@pytest.mark.parametrize("t", [0.9, 0.3, 0.02])
def test_step_probabilities_equal_the_float64_formulas(predictor, t):
    """Tolerance: 1e-6 absolute on probabilities (float32 scores relative to their row max)."""
    graph, noise = AbsorbingGraph(V), LogLinearNoise()
    log_score, x, score = setting()
    times = torch.full((x.shape[0],), t, dtype=torch.float64)
    dt = 0.05 if t > 0.05 else 0.01
    exact = predictor.probs(score, graph, noise, x, times, dt)
    exact = exact / exact.sum(-1, keepdim=True)
    sigma_bar, c = predictor.absorbing_factor(noise, times, dt)
    fast = absorbing_probs(log_score.float(), x, V, c, predictor.stay)
    torch.testing.assert_close(fast, exact, atol=1e-6, rtol=0)


def test_denoiser_probabilities_equal_the_float64_formula():
    graph, noise = AbsorbingGraph(V), LogLinearNoise()
    log_score, x, score = setting(1)
    times = torch.full((x.shape[0],), 1e-3, dtype=torch.float64)
    exact = Denoiser(graph, noise).probs(score, x, times)
    exact = exact / exact.sum(-1, keepdim=True)
    fast = absorbing_probs(log_score.float(), x, V, torch.expm1(noise.total(times)), None)
    assert fast[..., V].abs().max() == 0  # every position is filled
    torch.testing.assert_close(fast[..., :V], exact, atol=1e-6, rtol=0)


@pytest.mark.parametrize("stay", ["one", "score", None])
def test_draws_follow_the_step_probabilities(stay):
    """Chi-square over 40,000 draws of each position of one step; unmasked positions never move."""
    log_score, x, _ = setting(2, batch=2, length=3, scale=1.5)
    c = torch.tensor([0.08, 0.3], dtype=torch.float64)
    probs = absorbing_probs(log_score.float(), x, V, c, stay)
    n = 40_000
    reps = x.repeat(n, 1)  # [n B, L]
    draws = absorbing_update(log_score.float().repeat(n, 1, 1), reps, V, c.repeat(n), stay, torch.Generator().manual_seed(3))
    draws = draws.reshape(n, *x.shape)
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            counts = torch.bincount(draws[:, b, i], minlength=V + 1).double()
            if x[b, i] != V:
                assert counts[x[b, i]] == n
                continue
            expected = probs[b, i] * n
            keep = expected > 0
            assert counts[~keep].sum() == 0  # nothing of probability 0
            chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
            assert stats.chi2.sf(chi2, int(keep.sum()) - 1) > 1e-4, (b, i, counts, expected)


@pytest.mark.parametrize("r", [1e-7, 2e-8])
def test_rare_tokens_are_drawn_at_their_exact_mass(r):
    """GPT-2-sized draw (50,257 tokens): one head token of weight 1, 50,256 tail tokens of weight r
    each; over 100,000 draws the tail's share is within 3 standard errors of its exact mass
    (r = 1e-7: 0.0050; the reference code's float32 draw gives 0.0030; r = 2e-8: 0.0010 vs 0.00015)."""
    v = 50_257
    log_w = torch.full((1, v), math.log(r), dtype=torch.float64)
    log_w[0, 123] = 0.0
    weights, _ = row_weights(log_w)  # the step's float32 weights
    sums = block_sums(weights)
    exact = (v - 1) * r / (1 + (v - 1) * r)
    n, chunk, tail = 100_000, 20_000, 0
    g = torch.Generator().manual_seed(4)
    for _ in range(n // chunk):
        u = torch.rand(chunk, dtype=torch.float64, generator=g)
        tokens = draw_from_blocks(weights.expand(chunk, v), sums.expand(chunk, -1), u)
        tail += int((tokens != 123).sum())
    se = math.sqrt(exact * (1 - exact) / n)
    assert abs(tail / n - exact) < 3 * se, (tail / n, exact, se)


def test_a_zero_weight_entry_is_never_drawn_and_blocks_are_seamless():
    """Entries of weight 0 at block edges and past the vocabulary end; u near 0 and near 1."""
    v = 2 * 1024 + 5
    w = torch.zeros(4, v)
    w[:, 1023] = 1.0  # last entry of block 0
    w[:, 1024 + 1] = 2.0
    w[:, v - 1] = 1.0  # last real entry (the partial block)
    u = torch.tensor([0.0, 0.2499, 0.25, 1 - 1e-16], dtype=torch.float64)
    got = draw_from_blocks(w, block_sums(w), u)
    assert got.tolist() == [1023, 1023, 1025, v - 1]
