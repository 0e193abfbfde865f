"""SEDD maths against closed forms: vocabularies of 6 real tokens, i.i.d. categorical data (exact scores)."""

import math

import pytest
import torch
from scipy import stats

from mixlab.core.errors import ConfigError
from mixlab.sedd.elbo import elbo
from mixlab.sedd.graphs import AbsorbingGraph, UniformGraph
from mixlab.sedd.noise import GeometricNoise, LogLinearNoise
from mixlab.sedd.param import RADDScore, ScoreFn, SEDDScore
from mixlab.sedd.sampling import AnalyticPredictor, EulerPredictor, fixed_tokens, sample, sample_categorical
from mixlab.sedd.score_entropy import dense_score_entropy, weighted_score_entropy

F64 = torch.float64
PI = torch.tensor([0.35, 0.25, 0.15, 0.1, 0.1, 0.05], dtype=F64)  # i.i.d. data over n = 6 real tokens
N = len(PI)
H = float(-(PI * PI.log()).sum())
GRAPHS = {"absorb": lambda: AbsorbingGraph(N), "uniform": lambda: UniformGraph(N)}
NOISE = {"absorb": LogLinearNoise, "uniform": GeometricNoise}  # the paper's pairings


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dense_q(graph) -> torch.Tensor:
    """Q[y, x] = rate x -> y, built from the definitions (not from the graph's methods)."""
    if graph.absorbing:
        q = torch.zeros(graph.dim, graph.dim, dtype=F64)
        q[graph.mask_id, :N] = 1.0
        q[range(N), range(N)] = -1.0
        return q
    return torch.full((N, N), 1 / N, dtype=F64) - torch.eye(N, dtype=F64)


def pi_ext(graph) -> torch.Tensor:
    return torch.cat([PI, torch.zeros(graph.dim - N, dtype=F64)])


def marginal(graph, sigma_bar: torch.Tensor) -> torch.Tensor:
    """p_t of i.i.d. PI data, [B] -> [B, dim] (closed forms; checked against matrix_exp below)."""
    s = sigma_bar.to(F64)[:, None]
    if graph.absorbing:
        return torch.cat([torch.exp(-s) * PI, -torch.expm1(-s)], dim=1)
    return torch.exp(-s) * PI - torch.expm1(-s) / N


def exact_log_score(graph):
    """log p_t(y) - log p_t(x_t) for i.i.d. data: the exact time-conditioned score."""

    def score_fn(x, sigma_bar):
        logp = marginal(graph, sigma_bar).log()[:, None, :].expand(*x.shape, graph.dim)
        return logp - logp.gather(-1, x[..., None])

    return score_fn


class IIDLogits(torch.nn.Module):
    """A time-free 'network' whose RADD output is p0 = PI at every position (exact for i.i.d. data)."""

    def forward(self, x, sigma_bar):
        return torch.cat([PI.log(), torch.zeros(1, dtype=F64)]).expand(*x.shape, N + 1)


def tv_to_pi(tokens: torch.Tensor) -> float:
    freq = torch.bincount(tokens.flatten(), minlength=N).to(F64) / tokens.numel()
    return 0.5 * float((freq[:N] - PI).abs().sum() + freq[N:].sum())


# ---------------------------------------------------------------- noise

@pytest.mark.parametrize("noise", [GeometricNoise(), LogLinearNoise()], ids=["geometric", "loglinear"])
def test_noise_rate_is_the_derivative_of_the_total(noise):
    t, h = torch.linspace(0.01, 0.99, 50, dtype=F64), 1e-6
    sb, sigma = noise(t)
    fd = (noise.total(t + h) - noise.total(t - h)) / (2 * h)
    torch.testing.assert_close(sigma, fd, rtol=1e-7, atol=0)
    assert (sb > 0).all() and (sigma > 0).all()


def test_noise_endpoints_and_loglinear_masked_fraction():
    t = torch.linspace(0, 1, 101, dtype=F64)
    ll = LogLinearNoise(eps=1e-3)
    torch.testing.assert_close(-torch.expm1(-ll.total(t)), (1 - 1e-3) * t, rtol=1e-12, atol=1e-15)
    assert float(ll.total(t[:1])) == 0 and math.isclose(float(ll.total(t[-1:])), math.log(1000))
    geo = GeometricNoise(1e-4, 20.0)
    torch.testing.assert_close(geo.total(t[[0, -1]]), torch.tensor([1e-4, 20.0], dtype=F64))


# ---------------------------------------------------------------- graphs

@pytest.mark.parametrize("kind", GRAPHS)
def test_graph_vectors_are_columns_and_rows_of_q_and_exp_q(kind):
    graph, s, d = GRAPHS[kind](), torch.tensor([0.37], dtype=F64), torch.tensor([0.8], dtype=F64)
    q = dense_q(graph)
    assert torch.allclose(q.sum(0), torch.zeros(graph.dim, dtype=F64))  # columns sum to 0
    e, e_inv = torch.linalg.matrix_exp(s * q), torch.linalg.matrix_exp(-d * q)
    i = torch.arange(graph.dim)[None, :]  # every state, [1, dim]
    torch.testing.assert_close(graph.rate(i, F64)[0], q.T)
    torch.testing.assert_close(graph.transp_rate(i, F64)[0], q)
    torch.testing.assert_close(graph.transition(i, s)[0], e.T)
    torch.testing.assert_close(graph.transp_transition(i, s)[0], e)
    torch.testing.assert_close(marginal(graph, s)[0], e @ pi_ext(graph))
    score = torch.rand(1, 3, graph.dim, generator=gen(0), dtype=F64) + 0.1
    torch.testing.assert_close(graph.staggered_score(score, d), score @ e_inv.T)
    rev = graph.reverse_rate(i, score[:, :1].expand(1, graph.dim, graph.dim))[0]  # rows: out of state i
    expected = score[0, 0] * q  # R[i, y] = s_y Q[i, y]
    expected = expected - torch.diag(expected.diagonal()) - torch.diag(expected.sum(1) - expected.diagonal())
    torch.testing.assert_close(rev, expected)


@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("sigma_bar", [0.15, 1.3])
def test_sample_transition_frequencies_pass_a_chi_square_test(kind, sigma_bar):
    graph, g = GRAPHS[kind](), gen(1)
    e = torch.linalg.matrix_exp(sigma_bar * dense_q(graph))
    x0 = torch.arange(N).repeat_interleave(20000).reshape(N * 40, 500)  # 20000 copies of each token
    xt = graph.sample_transition(x0, torch.full((x0.shape[0],), sigma_bar), g)
    for tok in range(N):
        counts = torch.bincount(xt[x0 == tok], minlength=graph.dim).to(F64)
        expected = e[:, tok]
        sd = (expected * (1 - expected) / counts.sum()).sqrt()
        assert ((counts / counts.sum() - expected).abs() <= 4 * sd).all()
        support = expected > 0
        assert counts[~support].sum() == 0
        p = stats.chisquare(counts[support].numpy(), (expected[support] * counts.sum()).numpy()).pvalue
        assert p > 1e-3, (tok, p)


def test_sample_limit():
    assert (AbsorbingGraph(N).sample_limit((3, 5)) == N).all()
    u = UniformGraph(N).sample_limit((200, 50), gen(2))
    assert u.min() == 0 and u.max() == N - 1 and u.dtype == torch.long


@pytest.mark.parametrize("kind", GRAPHS)
def test_prior_kl_closed_form(kind):
    graph, s = GRAPHS[kind](), torch.tensor([2.0, 7.0], dtype=F64)
    x0 = torch.zeros(2, 10, dtype=torch.long)
    p = torch.linalg.matrix_exp(s[:, None, None] * dense_q(graph))[:, :, 0]  # p_{1|0}(. | 0)
    base = torch.full((graph.dim,), 1 / N, dtype=F64)
    if graph.absorbing:  # all-MASK with the forward leakage spread over the real tokens
        base = torch.cat([torch.exp(-s)[:, None] / N * torch.ones(N, dtype=F64), -torch.expm1(-s)[:, None]], 1)
    kl = torch.xlogy(p, p / base).sum(1) * 10
    torch.testing.assert_close(graph.prior_kl(x0, s), kl)


# ---------------------------------------------------------------- score entropy

def brute_force_se(graph, log_score, sigma_bar, xt, x0):
    """sum_{y != x_t} Q(x_t, y) [s_y - r_y log s_y + K(r_y)], r_y = p(y|x0)/p(x_t|x0), one position at a time."""
    q = dense_q(graph)
    out = torch.zeros(xt.shape, dtype=F64)
    for b in range(xt.shape[0]):
        e = torch.linalg.matrix_exp(float(sigma_bar[b]) * q)
        for l in range(xt.shape[1]):
            x, z = int(xt[b, l]), int(x0[b, l])
            for y in range(graph.dim):
                w, r, ls = float(q[x, y]), float(e[y, z] / e[x, z]), float(log_score[b, l, y])
                if y == x or w == 0:
                    continue
                k = r * (math.log(r) - 1) if r > 0 else 0.0
                out[b, l] += w * (math.exp(ls) - r * ls + k)
    return out


def noised(graph, sigma_bar, shape=(4, 12), seed=3):
    g = gen(seed)
    x0 = torch.multinomial(PI, shape[0] * shape[1], replacement=True, generator=g).reshape(shape)
    return x0, graph.sample_transition(x0, sigma_bar, g)


@pytest.mark.parametrize("kind", GRAPHS)
def test_score_entropy_closed_form_equals_dense_brute_force(kind):
    graph = GRAPHS[kind]()
    sigma_bar = torch.tensor([1e-3, 0.2, 1.0, 4.0], dtype=F64)
    x0, xt = noised(graph, sigma_bar)
    assert (xt != x0).any() and (xt == x0).any()
    log_score = torch.randn(*xt.shape, graph.dim, generator=gen(4), dtype=F64)
    se = graph.score_entropy(log_score, sigma_bar, xt, x0)
    torch.testing.assert_close(se, brute_force_se(graph, log_score, sigma_bar, xt, x0), rtol=1e-9, atol=1e-9)
    sigma = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64)
    torch.testing.assert_close(weighted_score_entropy(graph, log_score, sigma_bar, sigma, xt, x0), sigma * se.sum(1))


@pytest.mark.parametrize("kind", GRAPHS)
def test_denoising_score_entropy_is_zero_at_the_kernel_ratios(kind):
    graph = GRAPHS[kind]()
    sigma_bar = torch.tensor([1e-3, 0.2, 1.0, 4.0], dtype=F64)
    x0, xt = noised(graph, sigma_bar)
    p = graph.transition(x0, sigma_bar)  # p(y | x0), [B, L, dim]
    log_r = p.log() - p.gather(-1, xt[..., None]).log()
    assert float(graph.score_entropy(log_r, sigma_bar, xt, x0).abs().max()) <= 1e-6
    bumped = graph.score_entropy((1.2 * log_r.exp() + 0.01).log(), sigma_bar, xt, x0)
    moved = xt != x0  # where the forward process acted, any error in the ratios costs
    assert (bumped[moved] > 1e-4).all()


def _per_xt(graph, sigma_bar: float):
    """All noisy states x_t (one per position), the weights Q(x_t, .) without the diagonal, the exact
    marginal ratios p_t(y)/p_t(x_t) and the posterior p(x0 | x_t) over the real tokens."""
    sb = torch.tensor([sigma_bar], dtype=F64)
    xt = torch.arange(graph.dim)[None, :]
    pt = marginal(graph, sb)[0]
    ratio = (pt[None, :] / pt[:, None])[None]  # [1, dim(x_t), dim(y)]
    w = dense_q(graph).clone()
    w.fill_diagonal_(0)
    e = torch.linalg.matrix_exp(sigma_bar * dense_q(graph))
    post = e[:, :N] * PI / pt[:, None]  # p(x0 | x_t) = p(x_t | x0) pi(x0) / p_t(x_t), [dim(x_t), N]
    return sb, xt, ratio, w[None], post


@pytest.mark.parametrize("kind", GRAPHS)
@pytest.mark.parametrize("sigma_bar", [0.05, 1.5])
def test_implicit_score_entropy_vanishes_at_the_marginal_ratios_and_the_denoising_form_has_the_same_minimiser(kind, sigma_bar):
    graph = GRAPHS[kind]()
    sb, xt, ratio, w, post = _per_xt(graph, sigma_bar)
    l_star = ratio.log()
    assert float(dense_score_entropy(l_star, ratio, w).abs().max()) <= 1e-12
    l_bad = l_star + 0.2 * torch.randn(l_star.shape, generator=gen(6), dtype=F64)
    implicit_bad = dense_score_entropy(l_bad, ratio, w)
    assert (implicit_bad[w.sum(-1) > 0] > 1e-4).all()

    def expected_dse(l):  # E_{x0 | x_t} DSE(l; x_t, x0), exactly, for every x_t
        per_x0 = torch.stack([graph.score_entropy(l, sb, xt, torch.full_like(xt, z)) for z in range(N)], -1)
        return (per_x0 * post[None]).sum(-1)

    l_var = l_star.clone().requires_grad_(True)
    expected_dse(l_var).sum().backward()
    assert float(l_var.grad.abs().max()) <= 1e-6  # stationary at the marginal ratios
    # E_{x0|x_t} DSE(l) - E_{x0|x_t} DSE(l*) = implicit SE(l; r*): same minimiser, same excess
    torch.testing.assert_close(expected_dse(l_bad) - expected_dse(l_star), implicit_bad, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- parameterisations

def test_sedd_param_zero_logits():
    sb = torch.tensor([0.3, 2.0])
    x = torch.tensor([[0, 3, N], [N, 1, 2]])
    absorb, uniform = AbsorbingGraph(N), UniformGraph(N)
    out = SEDDScore(scale_by_sigma=False)(torch.zeros(2, 3, N), x.clamp_max(N - 1), sb, uniform)
    assert (out == 0).all()
    out = SEDDScore(scale_by_sigma=True)(torch.zeros(2, 3, N + 1), x, sb, absorb)
    offset = -torch.log(torch.expm1(sb)) - math.log(N)  # dim - 1 = n real tokens
    current = torch.nn.functional.one_hot(x, N + 1).bool()
    assert (out[current] == 0).all()
    torch.testing.assert_close(out[~current].reshape(2, -1), offset[:, None].expand(2, 3 * N))
    assert SEDDScore.time_conditioned and not RADDScore.time_conditioned


def test_radd_param_is_p0_times_the_masking_odds():
    graph, param = AbsorbingGraph(N), RADDScore()
    logits = torch.randn(2, 5, N + 1, generator=gen(7), dtype=F64)
    log_p0 = param.log_p0(logits, graph)
    torch.testing.assert_close(log_p0.exp().sum(-1), torch.ones(2, 5, dtype=F64))
    assert (log_p0[..., N] == float("-inf")).all()
    x = torch.tensor([[N, 0, N, 4, N], [1, N, N, N, 2]])
    sb = torch.tensor([0.4, 3.0], dtype=F64)
    out = param(logits, x, sb, graph)
    assert (out.gather(-1, x[..., None]) == 0).all()
    masked = x == N
    odds = (torch.exp(-sb) / -torch.expm1(-sb))[:, None, None]
    torch.testing.assert_close(out.exp()[..., :N][masked], (log_p0.exp()[..., :N] * odds)[masked])
    f = ScoreFn(IIDLogits(), param, graph)  # the exact score of i.i.d. data at masked positions
    torch.testing.assert_close(f(x, sb)[masked], exact_log_score(graph)(x, sb)[masked])


@pytest.mark.parametrize("param", [SEDDScore(scale_by_sigma=True), RADDScore()], ids=["sedd", "radd"])
def test_training_loss_gradients_are_finite(param):
    """The absorbing loss through either parameterisation, down to t = 1e-3 (RADD's -inf MASK column
    never enters the arithmetic)."""
    graph, noise = AbsorbingGraph(N), LogLinearNoise()
    x0 = torch.randint(0, N, (4, 10), generator=gen(19))
    sigma_bar, sigma = noise(torch.tensor([1e-3, 0.2, 0.6, 1.0]))
    xt = graph.sample_transition(x0, sigma_bar, gen(20))
    logits = torch.randn(4, 10, N + 1, generator=gen(21), requires_grad=True)
    loss = weighted_score_entropy(graph, param(logits, xt, sigma_bar, graph), sigma_bar, sigma, xt, x0)
    loss.mean().backward()
    assert torch.isfinite(loss).all() and (loss >= 0).all() and torch.isfinite(logits.grad).all()


def key_of(fn) -> str:
    """The config key named by the ConfigError that fn raises."""
    with pytest.raises(ConfigError) as err:
        fn()
    return err.value.key


def test_param_graph_mismatch_names_the_key():
    absorb, uniform = AbsorbingGraph(N), UniformGraph(N)
    assert key_of(lambda: SEDDScore(scale_by_sigma=True).check(uniform)) == "model.param.scale_by_sigma"
    assert key_of(lambda: RADDScore().check(uniform)) == "model.param"
    SEDDScore(scale_by_sigma=True).check(absorb), RADDScore().check(absorb), SEDDScore().check(uniform)


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
        pe, pa = EulerPredictor(graph, noise).probs(score, x, t, 0.05), AnalyticPredictor(graph, noise).probs(score, x, t, 0.05)
        assert torch.allclose(pe, pa, rtol=1e-6, atol=1e-12) == same
        assert torch.allclose(pa.sum(-1), torch.ones(2, 4, dtype=F64))  # exact score: Tweedie rows are normalised
    u = UniformGraph(N)
    pe = EulerPredictor(u, GeometricNoise()).probs(exact_log_score(u), x.clamp_max(N - 1), t, 0.05)
    pa = AnalyticPredictor(u, GeometricNoise()).probs(exact_log_score(u), x.clamp_max(N - 1), t, 0.05)
    assert not torch.allclose(pe, pa) and torch.allclose(pa.sum(-1), torch.ones(2, 4, dtype=F64))


@pytest.mark.parametrize("predictor", ["euler", "analytic"])
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
    x, _ = sample(exact_log_score(u), u, GeometricNoise(), 50, 24, steps=16, generator=gen(9), fixed=(fixed.positions, fixed.tokens), predictor="euler")
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
    one = [sample(f, graph, LogLinearNoise(), 1, length, steps, denoise=False, generator=gen(s), cache=True)[1]["nfe"] for s in range(3)]
    assert all(float(n).is_integer() and 60 < n < steps for n in one), one
    # sequences are cached independently, so one batch gives the mean of batch-1 runs
    counts = []

    class Counting(ScoreFn):
        def network(self, x, sigma_bar):
            counts.append(x.shape[0])
            return super().network(x, sigma_bar)

    batch = 96
    _, st = sample(Counting(IIDLogits(), RADDScore(), graph), graph, LogLinearNoise(), batch, length, steps, denoise=False, generator=gen(11), cache=True)
    assert st["nfe"] == sum(counts) / batch
    q = (1 - 1e-5) / steps
    exact = 1 + (steps - 1) * (1 - (1 - q) ** length)
    assert st["nfe"] == pytest.approx(steps * (1 - (1 - 1 / steps) ** length), rel=0.02)
    assert st["nfe"] == pytest.approx(exact, rel=0.01)


def test_sampler_errors_name_the_key():
    absorb = AbsorbingGraph(N)
    run = lambda **kw: sample(exact_log_score(absorb), absorb, LogLinearNoise(), 2, 8, **({"steps": 4} | kw))
    assert key_of(lambda: run(steps=0)) == "steps"
    assert key_of(lambda: run(predictor="heun")) == "predictor"
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
