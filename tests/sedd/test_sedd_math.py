"""SEDD maths against closed forms: noise, graphs, score entropy, parameterisations (vocabularies of
6 real tokens, i.i.d. categorical data with exact scores: tests/sedd/sedd_iid.py)."""

import math

import pytest
import torch
from scipy import stats
from sedd_iid import F64, GRAPHS, PI, IIDLogits, N, dense_q, exact_log_score, gen, key_of, marginal, pi_ext

from mixlab.sedd.graphs import AbsorbingGraph, UniformGraph
from mixlab.sedd.noise import GeometricNoise, LogLinearNoise
from mixlab.sedd.param import RADDScore, ScoreFn, SEDDScore
from mixlab.sedd.score_entropy import dense_score_entropy, weighted_score_entropy

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


def test_param_graph_mismatch_names_the_key():
    absorb, uniform = AbsorbingGraph(N), UniformGraph(N)
    assert key_of(lambda: SEDDScore(scale_by_sigma=True).check(uniform)) == "param.scale_by_sigma"  # the system's argument
    assert key_of(lambda: RADDScore().check(uniform)) == "param"
    SEDDScore(scale_by_sigma=True).check(absorb), RADDScore().check(absorb), SEDDScore().check(uniform)
