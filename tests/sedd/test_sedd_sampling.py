"""SEDD samplers and the ELBO against closed forms (i.i.d. categorical data over 6 real tokens with
exact scores: tests/sedd/sedd_iid.py)."""

import math

import pytest
import torch
from scipy import stats
from sedd_iid import F64, GRAPHS, NOISE, PI, H, IIDLogits, N, dense_q, exact_log_score, gen, key_of, marginal, tv_to_pi

from mixlab.sedd.elbo import elbo
from mixlab.sedd.graphs import AbsorbingGraph, UniformGraph
from mixlab.sedd.noise import GeometricNoise, LogLinearNoise
from mixlab.sedd.param import RADDScore, ScoreFn, SEDDScore
from mixlab.sedd.sampling import AnalyticPredictor, EulerPredictor, fixed_tokens, sample, sample_categorical

# ---------------------------------------------------------------- samplers


def test_exp_race_draws_follow_unnormalised_probabilities():
    p = torch.tensor([3.0, 0.0, 1.0, 0.5, 0.5], dtype=F64)  # sums to 5, not 1
    draws = sample_categorical(p.expand(50_000, 5), gen(18))
    counts = torch.bincount(draws, minlength=5).double()
    assert counts[1] == 0
    assert stats.chisquare(counts[p > 0].numpy(), (p[p > 0] / 5 * counts.sum()).numpy()).pvalue > 1e-3


def test_euler_and_analytic_steps_coincide_for_absorb_with_loglinear_noise():
    """e^{dsigma} - 1 = sigma(t) dt exactly for log-linear noise, so both unmask with the exact probability;
    with geometric noise (and on the uniform graph) they differ."""
    graph, x = AbsorbingGraph(N), torch.tensor([[N, 2, N, N], [0, N, 5, N]])
    t = torch.tensor([0.9, 0.3], dtype=F64)
    score = exact_log_score(graph)
    for noise, same in ((LogLinearNoise(), True), (GeometricNoise(), False)):
        pe, pa = (
            EulerPredictor().probs(score, graph, noise, x, t, 0.05),
            AnalyticPredictor().probs(score, graph, noise, x, t, 0.05),
        )
        assert torch.allclose(pe, pa, rtol=1e-6, atol=1e-12) == same
        assert torch.allclose(pa.sum(-1), torch.ones(2, 4, dtype=F64))  # exact score: Tweedie rows are normalised
    u = UniformGraph(N)
    pe = EulerPredictor().probs(exact_log_score(u), u, GeometricNoise(), x.clamp_max(N - 1), t, 0.05)
    pa = AnalyticPredictor().probs(exact_log_score(u), u, GeometricNoise(), x.clamp_max(N - 1), t, 0.05)
    assert not torch.allclose(pe, pa) and torch.allclose(pa.sum(-1), torch.ones(2, 4, dtype=F64))


@pytest.mark.parametrize("predictor", [EulerPredictor(), AnalyticPredictor()], ids=["euler", "analytic"])
@pytest.mark.parametrize("kind", GRAPHS)
def test_samplers_with_the_exact_score_reproduce_the_data_distribution(kind, predictor):
    graph = GRAPHS[kind]()
    x, st = sample(exact_log_score(graph), graph, NOISE[kind](), 100, 128, steps=64, predictor=predictor, generator=gen(8))
    assert x.shape == (100, 128) and x.dtype == torch.long and st["nfe"] == 65
    assert x.max() < N  # no MASK left
    assert tv_to_pi(x) < 0.02


def test_infill_keeps_the_fixed_positions():
    graph = AbsorbingGraph(N)
    fixed = fixed_tokens(24, N, prefix=[5, 5, 5], suffix=[4, 4], infill={10: 5, 12: 5})
    assert fixed.positions.tolist() == [0, 1, 2, 22, 23, 10, 12]
    x, _ = sample(exact_log_score(graph), graph, LogLinearNoise(), 400, 24, steps=32, generator=gen(9), fixed=fixed)
    assert (x[:, fixed.positions] == fixed.tokens).all()
    free = torch.ones(24, dtype=torch.bool)
    free[fixed.positions] = False
    assert tv_to_pi(x[:, free]) < 0.03  # the free positions still follow the data (independent positions)
    u = UniformGraph(N)
    x, _ = sample(
        exact_log_score(u),
        u,
        GeometricNoise(),
        50,
        24,
        steps=16,
        generator=gen(9),
        fixed=(fixed.positions, fixed.tokens),
        predictor=EulerPredictor(),
    )
    assert (x[:, fixed.positions] == fixed.tokens).all()


def test_cached_and_uncached_samplers_agree_under_one_seed():
    graph = AbsorbingGraph(N)
    f = ScoreFn(IIDLogits(), RADDScore(), graph)
    a, sa = sample(f, graph, LogLinearNoise(), 32, 40, steps=64, generator=gen(10))
    b, sb = sample(f, graph, LogLinearNoise(), 32, 40, steps=64, generator=gen(10), cache=True)
    assert torch.equal(a, b)
    assert sa["nfe"] == 65 and sb["nfe"] < 40


def test_cached_sampler_counts_one_evaluation_per_step_that_changed_tokens():
    """Log-linear noise + exact score: each token is unmasked at an independent uniform step
    (probability q = (1 - eps)/T each), so the evaluation before step k+1 is needed iff step k changed
    a token: E[nfe] = 1 + (T - 1)(1 - (1 - q)^L) without the denoiser, ~ T (1 - (1 - 1/T)^L)."""
    graph, steps, length = AbsorbingGraph(N), 128, 128
    f = ScoreFn(IIDLogits(), RADDScore(), graph)
    one = [
        sample(f, graph, LogLinearNoise(), 1, length, steps, denoise=False, generator=gen(s), cache=True)[1]["nfe"]
        for s in range(3)
    ]
    assert all(float(n).is_integer() and 60 < n < steps for n in one), one
    # sequences are cached independently, so one batch gives the mean of batch-1 runs
    counts = []

    class Counting(ScoreFn):
        def network(self, x, sigma_bar):
            counts.append(x.shape[0])
            return super().network(x, sigma_bar)

    batch = 96
    _, st = sample(
        Counting(IIDLogits(), RADDScore(), graph),
        graph,
        LogLinearNoise(),
        batch,
        length,
        steps,
        denoise=False,
        generator=gen(11),
        cache=True,
    )
    assert st["nfe"] == sum(counts) / batch
    q = (1 - 1e-5) / steps
    exact = 1 + (steps - 1) * (1 - (1 - q) ** length)
    assert st["nfe"] == pytest.approx(steps * (1 - (1 - 1 / steps) ** length), rel=0.02)
    assert st["nfe"] == pytest.approx(exact, rel=0.01)


def test_sampler_errors_name_the_key():
    absorb = AbsorbingGraph(N)

    def run(**kw):
        return sample(exact_log_score(absorb), absorb, LogLinearNoise(), 2, 8, **({"steps": 4} | kw))

    assert key_of(lambda: run(steps=0)) == "steps"
    assert key_of(lambda: run(predictor="heun")) == "predictor"  # a Predictor instance (conf/sampler/<name>.yaml), not a name
    assert key_of(lambda: run(eps=1.0)) == "eps"
    assert key_of(lambda: run(cache=True)) == "cache"  # a time-conditioned score
    assert key_of(lambda: run(fixed=(torch.tensor([1, 1]), torch.tensor([2, 3])))) == "infill"  # overlap
    assert key_of(lambda: run(fixed=(torch.tensor([8]), torch.tensor([2])))) == "infill"  # out of range
    assert key_of(lambda: run(fixed=(torch.tensor([0]), torch.tensor([N])))) == "infill"  # MASK
    assert key_of(lambda: fixed_tokens(8, N, prefix=[0] * 9)) == "prefix"
    assert key_of(lambda: fixed_tokens(8, N, prefix=[0, 1, N])) == "prefix"
    assert key_of(lambda: fixed_tokens(8, N, prefix=[0] * 5, suffix=[1] * 4)) == "suffix"
    assert key_of(lambda: fixed_tokens(8, N, suffix=[1, 2], infill={7: 3})) == "infill"
    assert fixed_tokens(8, N) is None and fixed_tokens(8, N, suffix=[1]).key == "suffix"


# ---------------------------------------------------------------- ELBO


def expected_se(graph, sigma_bar: float) -> torch.Tensor:
    """E_{x_t ~ p(.|z)} SE(exact marginal score; x_t, z) for each clean token z, exactly (sum over x_t), [N]."""
    sb = torch.tensor([sigma_bar], dtype=F64)
    e = torch.linalg.matrix_exp(sigma_bar * dense_q(graph))
    xt = torch.arange(graph.dim)[None]
    se = torch.stack([graph.score_entropy(exact_log_score(graph)(xt, sb), sb, xt, torch.full_like(xt, z))[0] for z in range(N)])
    return (se * e[:, :N].T).sum(1)


def posterior_nll(graph, sigma_bar: float) -> torch.Tensor:
    """E_{x_t ~ p(.|z)} [-log p(z | x_t)] for each clean token z, [N]: with the exact score the expected
    integral of the denoising score entropy over sigma_bar in [0, b] is this at b (checked below)."""
    e = torch.linalg.matrix_exp(sigma_bar * dense_q(graph))[:, :N]  # [x_t, z]
    post = e * PI / (e @ PI)[:, None]
    return -torch.xlogy(e, post).sum(0)


@pytest.mark.parametrize("kind", GRAPHS)
def test_expected_score_entropy_integrates_to_the_posterior_code_length(kind):
    """int_0^b E[SE] d sigma_bar = E[-log p(x0 | x_b)]: the identity behind the ELBO tests; and the
    ELBO's 4-point midpoint rule on [0, sigma_bar(eps)) is accurate: to 1e-6 relative for absorb (smooth
    integrand), to 1 % = 1e-5 nats/token for uniform (E[SE] ~ (1 - 1/n) log(1/sigma_bar) near 0)."""
    graph, noise, b = GRAPHS[kind](), NOISE[kind](), 3.0
    u = torch.linspace(math.log(1e-12), math.log(b), 1001, dtype=F64)  # d sigma_bar = sigma_bar d log sigma_bar
    vals = torch.stack([expected_se(graph, float(x.exp())) * float(x.exp()) for x in u])
    torch.testing.assert_close(torch.trapezoid(vals, u, dim=0), posterior_nll(graph, b), rtol=1e-4, atol=1e-6)
    sb_eps = float(noise.total(torch.tensor(1e-3, dtype=F64)))
    mid = sum(expected_se(graph, sb_eps * (j + 0.5) / 4) for j in range(4)) * sb_eps / 4
    torch.testing.assert_close(mid, posterior_nll(graph, sb_eps), rtol=1e-6 if graph.absorbing else 1e-2, atol=0)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def _iid_data(b: int, length: int, seed: int) -> torch.Tensor:
    return torch.multinomial(PI, b * length, replacement=True, generator=gen(seed)).reshape(b, length)


@pytest.mark.parametrize("kind", GRAPHS)
def test_elbo_with_the_exact_score_is_the_data_entropy_plus_the_prior_mismatch(kind):
    """E[bound] = H(p0) + KL(p1 || p_base) = L H + L KL(p1 || p_base) (the exact score leaves only the
    prior mismatch; 3e-2 nats here for absorb, 1e-16 for uniform). Per sequence, the diffusion part's
    expectation given x0 is sum_pos E[-log p(x0|x_1)] - E[-log p(x0|x_eps)] (Monte Carlo error only)."""
    graph, noise, length = GRAPHS[kind](), NOISE[kind](), 16
    x0 = _iid_data(128, length, 12)
    out = elbo(exact_log_score(graph), graph, noise, x0, timesteps=100, generator=gen(13), t_batch=64)
    assert set(out) == {"diffusion", "truncation", "prior", "total"} and out["total"].shape == (128,)
    torch.testing.assert_close(out["total"], out["diffusion"] + out["truncation"] + out["prior"])
    sb1 = float(noise.total(torch.tensor(1.0, dtype=F64)))
    sb_eps = float(noise.total(torch.tensor(1e-3, dtype=F64)))
    if graph.absorbing:
        kl_p1 = math.exp(-sb1) * float((PI * (PI * N).log()).sum())
    else:
        p1 = marginal(graph, torch.tensor([sb1]))[0]
        kl_p1 = float((p1 * (p1 * N).log()).sum())
    m, se = _mean_se(out["total"])  # data and Monte Carlo error
    assert abs(m - length * (H + kl_p1)) < 3 * se, (m, se, length * (H + kl_p1))
    expected = (posterior_nll(graph, sb1) - posterior_nll(graph, sb_eps))[x0].sum(1)
    m, se = _mean_se(out["diffusion"] - expected)  # Monte Carlo error only
    assert abs(m) < 3 * se and se < 0.25, (m, se)
    assert 0 <= float(out["truncation"].mean()) < 0.2  # ~ L E[-log p(x0|x_eps)] = 0.03 (absorb), 0.02 (uniform)


@pytest.mark.parametrize("kind,eps", [("absorb", 0.05), ("uniform", 0.5)])
def test_elbo_truncation_part_is_the_midpoint_rule_of_the_expected_score_entropy(kind, eps):
    """With a wide [0, eps) (so the rare moves near sigma_bar = 0 are frequent enough to test), the
    [0, eps) part averages to sigma_bar(eps)/J sum_j E[SE](sigma_bar_j) at the midpoints."""
    graph, noise, length = GRAPHS[kind](), NOISE[kind](), 16
    x0 = _iid_data(512, length, 16)
    out = elbo(exact_log_score(graph), graph, noise, x0, timesteps=4, generator=gen(18), eps=eps, t_batch=64, trunc_points=4)
    sb_eps = float(noise.total(torch.tensor(eps, dtype=F64)))
    per_token = sum(expected_se(graph, sb_eps * (j + 0.5) / 4) for j in range(4)) * sb_eps / 4
    m, se = _mean_se(out["truncation"] - per_token[x0].sum(1))
    assert abs(m) < 3 * se and se < 0.1 * float(per_token[x0].sum(1).mean()), (m, se)


def test_elbo_errors_name_the_key():
    graph, x0 = AbsorbingGraph(N), torch.zeros(1, 4, dtype=torch.long)
    assert key_of(lambda: elbo(exact_log_score(graph), graph, LogLinearNoise(), x0, timesteps=0)) == "timesteps"
    assert key_of(lambda: elbo(exact_log_score(graph), graph, LogLinearNoise(), x0, t_batch=0)) == "t_batch"
    assert key_of(lambda: elbo(exact_log_score(graph), graph, LogLinearNoise(), x0, eps=1.0)) == "eps"


def test_elbo_of_the_uniform_p0_score_is_the_uniform_code_length():
    """SEDDScore(scale_by_sigma) with zero logits is the exact score of uniform data: the bound is
    (1 - eps) L log n + prior for every x0, whatever the data."""
    graph, noise = AbsorbingGraph(N), LogLinearNoise()
    f = ScoreFn(lambda x, sb: torch.zeros(*x.shape, N + 1, dtype=F64), SEDDScore(scale_by_sigma=True), graph)
    out = elbo(f, graph, noise, _iid_data(64, 16, 14), timesteps=64, generator=gen(15), t_batch=64)
    m, se = _mean_se(out["total"] - out["prior"])
    assert abs(m - (1 - 1e-3) * 16 * math.log(N)) < 3 * se + 1e-3
    assert m > 16 * H + 1  # worse than the exact score's L H
