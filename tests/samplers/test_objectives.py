"""Sampler objectives against hand-written references (per-sample loops) and closed forms."""

import pytest
import torch
from closed_form import ExactFlow, GaussianTarget, exact_policy

from mixlab.core.errors import ArgumentError
from mixlab.samplers.nets import FlowNet, ForwardLookingFlow, reference_log_prob
from mixlab.samplers.objectives import (
    DetailedBalance,
    ForwardLookingSubTB,
    PathIntegralSampler,
    SubTrajectoryBalance,
    TrajectoryBalance,
    VarGrad,
    subtb_weights,
)
from mixlab.samplers.rollout import DiffusionRollout, RankNoise


def terms(B=4, T=5, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = {
        k: torch.randn(*shape, generator=g)
        for k, shape in [("log_pf", (B, T)), ("log_pb", (B, T)), ("log_r", (B,)), ("log_f", (B, T + 1))]
    }
    out["log_pb"][:, 0] = 0
    for v in out.values():
        v.requires_grad_(requires_grad)
    return out


def test_subtb_weights():
    for T, lam in [(1, 2.0), (5, 2.0), (7, 0.5), (30, 2.0)]:
        w = subtb_weights(T, lam, torch.float64)
        assert w.shape == (T + 1, T + 1)
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
        assert (torch.tril(w) == 0).all() and (torch.triu(w, 1) > 0).sum() == T * (T + 1) // 2
    w = subtb_weights(2, 2.0)
    torch.testing.assert_close(w[[0, 1, 0], [1, 2, 2]], torch.tensor([0.25, 0.25, 0.5]))
    w0T = [subtb_weights(T, 2.0, torch.float64)[0, T].item() for T in (10, 50, 100, 400)]
    assert abs(w0T[-1] - 0.25) < 1e-9 and abs(w0T[1] - 0.25) < 1e-9 and abs(w0T[0] - 0.25) > 1e-4
    assert all(abs(a - 0.25) >= abs(b - 0.25) for a, b in zip(w0T, w0T[1:]))  # converges to 1/4


def subtb_loop(log_pf, log_pb, log_r, log_f, lam):
    """The reference: per sample, per (m, n), weight lam^(n-m) normalised over all m < n."""
    B, T = log_pf.shape
    f = log_f.clone()
    f[:, -1] = log_r
    total = 0.0
    norm = sum(lam ** (n - m) for m in range(T + 1) for n in range(m + 1, T + 1))
    for b in range(B):
        for m in range(T + 1):
            for n in range(m + 1, T + 1):
                r = f[b, m] + (log_pf[b, m:n] - log_pb[b, m:n]).sum() - f[b, n]
                total = total + lam ** (n - m) / norm * r**2
    return total


@pytest.mark.parametrize("lam", [2.0, 0.7])
def test_subtb_equals_per_sample_loop(lam):
    t = terms(B=3, T=6)
    torch.testing.assert_close(SubTrajectoryBalance(lam)(**t), subtb_loop(**t, lam=lam))
    torch.testing.assert_close(ForwardLookingSubTB(lam)(**t), subtb_loop(**t, lam=lam))


def test_db_tb_vargrad_pis_by_hand():
    t = terms(B=3, T=4)
    pf, pb, r, f = t["log_pf"], t["log_pb"], t["log_r"], t["log_f"].clone()
    f[:, -1] = r
    db = sum(0.5 * (f[b, i] + pf[b, i] - pb[b, i] - f[b, i + 1]) ** 2 for b in range(3) for i in range(4)) / 3
    torch.testing.assert_close(DetailedBalance()(**t), db)
    log_z = torch.tensor(0.8)
    tb = sum(0.5 * (log_z + pf[b].sum() - pb[b].sum() - r[b]) ** 2 for b in range(3)) / 3
    torch.testing.assert_close(TrajectoryBalance()(**t, log_z=log_z), tb)
    zeta = r + pb.sum(-1) - pf.sum(-1)
    torch.testing.assert_close(VarGrad()(**t), 0.5 * zeta.var(unbiased=False))
    torch.testing.assert_close(PathIntegralSampler(dim=7)(**t), (pf.sum(-1) - pb.sum(-1) - r).mean() / 7)


def test_log_r_has_no_gradient_except_for_pis():
    t = terms(requires_grad=True)
    for objective, extra in [
        (TrajectoryBalance(), {"log_z": torch.tensor(0.1)}),
        (VarGrad(), {}),
        (DetailedBalance(), {}),
        (SubTrajectoryBalance(), {}),
    ]:
        loss = objective(**t, **extra)
        assert torch.autograd.grad(loss, t["log_r"], allow_unused=True)[0] is None
        assert torch.autograd.grad(loss, t["log_pf"])[0].abs().sum() > 0
    loss = PathIntegralSampler(dim=2)(**t)
    torch.testing.assert_close(torch.autograd.grad(loss, t["log_r"])[0], torch.full((4,), -1 / 8))


def test_flows_ignore_the_last_column():
    t = terms()
    other = {**t, "log_f": t["log_f"].clone()}
    other["log_f"][:, -1] = 123.0
    for objective in (DetailedBalance(), SubTrajectoryBalance()):
        torch.testing.assert_close(objective(**t), objective(**other))


def test_vargrad_with_global_mean_reproduces_one_process():
    """Two 'ranks' holding rows 0::2 and 1::2, centred on the all-reduced mean: their losses and
    gradients average to the single-process ones (with local centres they do not)."""
    t = terms(B=8, T=3, seed=1, requires_grad=True)
    loss = VarGrad()(**t)
    (grad,) = torch.autograd.grad(loss, t["log_pf"])
    halves = [{k: v[r::2] for k, v in t.items()} for r in (0, 1)]
    zetas = [h["log_r"] + h["log_pb"].sum(-1) - h["log_pf"].sum(-1) for h in halves]
    global_mean = torch.stack([z.detach().mean() for z in zetas]).mean()
    ranks = [VarGrad()(**h, all_reduce_mean=lambda c: global_mean) for h in halves]
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, loss)
    grads = [torch.autograd.grad(r, t["log_pf"], retain_graph=True)[0] for r in ranks]
    torch.testing.assert_close((grads[0] + grads[1]) / 2, grad)
    local = [VarGrad()(**h) for h in halves]
    assert abs(((local[0] + local[1]) / 2 - loss).item()) > 1e-3


def test_objectives_declare_what_they_need():
    assert TrajectoryBalance.needs_log_z and not VarGrad.needs_log_z
    assert DetailedBalance.needs_flow and SubTrajectoryBalance.needs_flow and ForwardLookingSubTB.needs_flow
    assert not TrajectoryBalance.needs_flow and PathIntegralSampler.reparametrised
    assert not any(o.reparametrised for o in (TrajectoryBalance, VarGrad, DetailedBalance, SubTrajectoryBalance))


def test_errors_name_the_argument():
    t = {**terms(), "log_f": None}
    for objective in (DetailedBalance(), SubTrajectoryBalance(), ForwardLookingSubTB()):
        with pytest.raises(ArgumentError) as info:
            objective.check(None)
        assert info.value.arg == "flow"
        with pytest.raises(ArgumentError) as info:
            objective(**t)
        assert info.value.arg == "flow"
    with pytest.raises(ArgumentError) as info:
        ForwardLookingSubTB().check(FlowNet(2))
    assert info.value.arg == "flow"
    ForwardLookingSubTB().check(ForwardLookingFlow(FlowNet(2), 1.0, 10))
    SubTrajectoryBalance().check(FlowNet(2))
    TrajectoryBalance().check(None)
    for build, arg in [
        (lambda: SubTrajectoryBalance(0.0), "lam"),
        (lambda: SubTrajectoryBalance(True), "lam"),
        (lambda: PathIntegralSampler(0), "dim"),
        (lambda: PathIntegralSampler(8).bind(4), "dim"),
    ]:
        with pytest.raises(ArgumentError) as info:
            build()
        assert info.value.arg == arg and len(str(info.value).splitlines()) == 1
    with pytest.raises(TypeError):
        TrajectoryBalance()(**terms())


class ForwardLookingResidual(torch.nn.Module):
    """NN(x, t) that makes the forward-looking flow exact for the Gaussian target:
    exact log F - (1 - t) log N(x; 0, s2 max(t, dt)) - t log R(x)."""

    def __init__(self, target, s2, T):
        super().__init__()
        self.exact, self.target, self.s2, self.dt = ExactFlow(target), target, s2, 1 / T

    def forward(self, x, t):
        ref = reference_log_prob(x, t, self.s2, self.dt)
        return self.exact(x, t) - (1 - t) * ref - t * self.target.log_reward(x)


@pytest.mark.parametrize("vectorize", ["true", "false"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_losses_vanish_for_the_exact_sampler(vectorize, direction):
    """Target Z N(mu, s2 I), constant drift mu, log Z_theta = log Z, log F_t = log Z + log N(x; t mu, s2 t I)."""
    s2, T = 2.0, 100
    target = GaussianTarget([1.0, -2.0, 0.5], s2, log_z=3.7)
    rollout = DiffusionRollout(T=T, sigma2=s2, vectorize=vectorize)
    policy = exact_policy(target)
    flows = {"exact": ExactFlow(target), "fl": ForwardLookingFlow(ForwardLookingResidual(target, s2, T), s2, T)}
    for name, flow in flows.items():
        if direction == "forward":
            traj = rollout.forward(policy, target, RankNoise(torch.Generator().manual_seed(0), 16), flow=flow)
        else:
            x1 = target.sample(16, torch.Generator().manual_seed(1))
            traj = rollout.backward(policy, target, x1, RankNoise(torch.Generator().manual_seed(0), 16), flow=flow)
        losses = {
            "TB": TrajectoryBalance()(**traj.terms(), log_z=torch.tensor(3.7)),
            "VarGrad": VarGrad()(**traj.terms()),
            "DB": DetailedBalance()(**traj.terms()),
            "SubTB": SubTrajectoryBalance()(**traj.terms()),
            "FL-SubTB": ForwardLookingSubTB()(**traj.terms()),
        }
        for key, loss in losses.items():
            assert loss.item() == pytest.approx(0.0, abs=1e-4), (name, key)
        gap = TrajectoryBalance()(**traj.terms(), log_z=torch.tensor(3.7 - 0.5))
        assert gap.item() == pytest.approx(0.5 * 0.5**2, abs=1e-4)
