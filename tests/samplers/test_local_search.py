"""Parallel MALA (local search): invariance of N(0, I), step-size rules, the cached chain equals
an uncached one for equal noise, DDP count reduction."""

import math

import pytest
import torch

from mixlab.core.errors import ArgumentError
from mixlab.samplers.energies import Energy, Manywell
from mixlab.samplers.local_search import AdaptiveStepSize, FixedStepSize, PaperStepSize, ReferenceStepSize, mala


class StandardNormal(Energy):
    """log R = -|x|^2 / 2; counts energy evaluations."""

    def __init__(self, dim):
        super().__init__()
        self.dim, self.calls = dim, 0

    def log_reward(self, x):
        return -0.5 * (x**2).sum(1)

    def grad_log_reward(self, x):
        return -x

    def log_reward_and_grad(self, x):
        self.calls += 1
        return self.log_reward(x), self.grad_log_reward(x)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_standard_normal_stays_standard_normal():
    energy, g = StandardNormal(4), _gen(0)
    x = torch.randn(20_000, 4, generator=g, dtype=torch.float64)
    out = mala(energy, x, steps=40, burn_in=20, step_size=0.5, generator=g)
    final = out.final
    assert final.mean(0).abs().max() < 0.04  # SE 0.007
    torch.testing.assert_close(final.var(0), torch.ones(4, dtype=torch.float64), atol=0.05, rtol=0)  # SE 0.01
    assert ((final**4).mean(0) - 3).abs().max() < 0.25  # kurtosis of N(0,1)
    assert 0.3 < out.acceptance < 0.99 and energy.calls == 40 + 1  # one evaluation per step (+ the start)
    torch.testing.assert_close(out.final_log_r, energy.log_reward(final))
    torch.testing.assert_close(out.log_r, energy.log_reward(out.samples))


def _uncached_chain(energy, x, steps, burn_in, eta, rule, generator):
    """The textbook loop: log R and grad at both the state and the proposal, every step."""
    kept, kept_log_r, rate, window = [], [], 0.0, [0, 0]
    for step in range(steps):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype)
        g_x = Energy.grad_log_reward(energy, x)  # autograd, no cache
        prop = x + eta * g_x + math.sqrt(2 * eta) * noise
        g_p = Energy.grad_log_reward(energy, prop)
        log_q_fwd = -((prop - x - eta * g_x) ** 2).sum(1) / (4 * eta)
        log_q_bwd = -((x - prop - eta * g_p) ** 2).sum(1) / (4 * eta)
        log_alpha = energy.log_reward(prop) - energy.log_reward(x) + log_q_bwd - log_q_fwd
        accept = torch.log(u) < log_alpha
        if step >= burn_in:
            kept.append(prop[accept])
            kept_log_r.append(energy.log_reward(prop)[accept])
        x = torch.where(accept[:, None], prop, x)
        window = [window[0] + int(accept.sum()), window[1] + len(accept)]
        if step % rule.window == 0:
            rate, window = window[0] / window[1], [0, 0]
        eta = eta * (rule.up if rate > rule.target else rule.down)
    return torch.cat(kept), torch.cat(kept_log_r), x, eta


@pytest.mark.parametrize("rule", [PaperStepSize(), ReferenceStepSize()], ids=["paper", "reference"])
def test_cached_chain_equals_an_uncached_chain_for_equal_noise(rule):
    energy = Manywell(8)  # non-Gaussian, multimodal
    x = energy.sample(64, _gen(1)).double()
    out = mala(energy, x, steps=30, burn_in=10, step_size=0.05, rule=rule, generator=_gen(2))
    ref_x, ref_log_r, ref_final, ref_eta = _uncached_chain(energy, x, 30, 10, 0.05, rule, _gen(2))
    assert len(out.samples) == len(ref_x) > 0
    torch.testing.assert_close(out.samples, ref_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.log_r, ref_log_r, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out.final, ref_final, rtol=1e-12, atol=1e-12)
    assert out.step_size == pytest.approx(ref_eta, rel=1e-12)


def test_step_size_grows_above_and_shrinks_below_the_target_acceptance():
    # tiny steps on N(0, I): acceptance ~ 1 -> x1.1 per step; huge steps in 50-d: acceptance 0 -> x0.9
    small = mala(
        StandardNormal(2), torch.randn(500, 2, generator=_gen(3)), steps=10, burn_in=0, step_size=1e-4, generator=_gen(4)
    )
    assert small.acceptance > 0.99 and small.step_size == pytest.approx(1e-4 * 1.1**10, rel=1e-9)
    big = mala(
        StandardNormal(50), torch.randn(500, 50, generator=_gen(5)), steps=10, burn_in=0, step_size=100.0, generator=_gen(6)
    )
    assert big.acceptance == 0 and big.step_size == pytest.approx(100 * 0.9**10, rel=1e-9)
    assert len(big.samples) == 0 and big.samples.shape[1] == 50
    code = mala(
        StandardNormal(2),
        torch.randn(500, 2, generator=_gen(3)),
        steps=10,
        burn_in=0,
        step_size=1e-4,
        rule=ReferenceStepSize(),
        generator=_gen(4),
    )
    assert code.step_size == pytest.approx(1e-4 * 1.01**10, rel=1e-9)
    fixed = mala(
        StandardNormal(2),
        torch.randn(50, 2, generator=_gen(3)),
        steps=5,
        burn_in=0,
        step_size=0.3,
        rule=FixedStepSize(),
        generator=_gen(4),
    )
    assert fixed.step_size == 0.3


def test_reduce_sets_the_counts_that_drive_the_step_size():
    """`reduce` replaces this rank's [accepted, proposed] by the global counts (here: scripted), so
    every rank adapts eta from the same numbers; windows refresh after steps 0, 5, 10 (reference)."""
    script = iter([(9, 10), (1, 10), (1, 10), (1, 10), (1, 10), (1, 10), (9, 10), (9, 10), (9, 10), (9, 10), (9, 10)])
    seen = []

    def reduce(counts):
        seen.append(counts.clone())
        return torch.tensor(next(script), dtype=torch.float64)

    rule = AdaptiveStepSize(up=2.0, down=0.5, target=0.574, window=5)
    out = mala(
        StandardNormal(2), torch.zeros(10, 2), steps=11, burn_in=0, step_size=1.0, rule=rule, generator=_gen(7), reduce=reduce
    )
    # rates: step 0 -> 0.9 (up); steps 1-4 keep 0.9 (up x4); step 5 window {1..5} -> 0.1 (down);
    # steps 6-9 keep 0.1 (down x4); step 10 window {6..10} -> 0.9 (up)
    assert out.step_size == pytest.approx(2.0**5 * 0.5**5 * 2.0)
    assert (out.accepted, out.proposed) == (9 * 6 + 1 * 5, 110) and out.acceptance == pytest.approx(59 / 110)
    assert all(c.dtype == torch.float64 and c.shape == (2,) and c[1] == 10 for c in seen)


def test_non_finite_proposals_are_rejected():
    class HalfSpace(StandardNormal):  # log R = NaN for x_0 > 1
        def log_reward(self, x):
            return torch.where(x[:, 0] > 1, torch.nan, -0.5 * (x**2).sum(1))

        def grad_log_reward(self, x):
            return torch.where(x[:, :1] > 1, torch.nan, -x)

    out = mala(HalfSpace(2), torch.zeros(2000, 2), steps=20, burn_in=0, step_size=0.5, generator=_gen(8))
    assert torch.isfinite(out.final).all() and (out.final[:, 0] <= 1).all() and (out.samples[:, 0] <= 1).all()
    assert torch.isfinite(out.log_r).all()


def test_bad_arguments_name_the_key():
    x = torch.zeros(3, 2)
    with pytest.raises(ArgumentError, match="^burn_in"):
        mala(StandardNormal(2), x, steps=10, burn_in=10)
    with pytest.raises(ArgumentError, match="^step_size"):
        mala(StandardNormal(2), x, step_size=0.0)
    with pytest.raises(ArgumentError, match="^window"):
        AdaptiveStepSize(window=0)
