"""Sampler trajectories against closed forms: a Gaussian target Z N(mu, s2 I) is sampled exactly by
the constant drift mu from x_0 = 0, and the Brownian bridge is the exact posterior of that walk,
so log Z_theta + S_F - S_B - log R = log Z_theta - log Z on every trajectory."""

import math

import pytest
import torch
from closed_form import ExactFlow, GaussianTarget, exact_policy, randomise_last_layer

from mixlab.core.errors import ArgumentError
from mixlab.samplers.langevin import LangevinPolicy
from mixlab.samplers.nets import FlowNet, ForwardLookingFlow, LangevinScale, PISPolicy, reference_log_prob
from mixlab.samplers.objectives import PathIntegralSampler, SubTrajectoryBalance, TrajectoryBalance
from mixlab.samplers.rollout import DiffusionRollout, Exploration, RankNoise, bridge_log_pb, bridge_path

MU = [1.0, -2.0, 0.5]


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def noise(seed: int, n: int, **kw) -> RankNoise:
    return RankNoise(torch.Generator().manual_seed(seed), n, **kw)


class CountingEnergy:
    """Wraps an energy and counts the rows it evaluates grad log R at."""

    def __init__(self, energy):
        self.energy, self.dim, self.grad_rows = energy, energy.dim, 0

    def log_reward(self, x):
        return self.energy.log_reward(x)

    def grad_log_reward(self, x):
        self.grad_rows += x.shape[0]
        return self.energy.grad_log_reward(x)


def langevin(dim: int, seed: int = 0) -> LangevinPolicy:
    torch.manual_seed(seed)
    scale = LangevinScale(dim, per_dimension=True)
    with torch.no_grad():
        scale.net[-1].weight.normal_(0, 0.1)
    return LangevinPolicy(randomise_last_layer(PISPolicy(dim), seed), scale)


@pytest.mark.parametrize("vectorize", ["true", "false"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("s2", [1.0, 5.0])
def test_tb_residual_is_log_z_gap_for_the_exact_sampler(vectorize, direction, s2, float64):
    target = GaussianTarget(MU, s2, log_z=3.7)
    rollout = DiffusionRollout(T=100, sigma2=s2, vectorize=vectorize)
    policy = exact_policy(target)
    if direction == "forward":
        traj = rollout.forward(policy, target, noise(1, 32))
    else:
        traj = rollout.backward(policy, target, target.sample(32, torch.Generator().manual_seed(2)), noise(1, 32))
    log_z_theta = 1.25
    resid = log_z_theta + traj.log_pf.sum(-1) - traj.log_pb.sum(-1) - traj.log_r
    torch.testing.assert_close(resid, torch.full_like(resid, log_z_theta - target.log_z), atol=1e-8, rtol=0)
    assert traj.states.shape == (32, 101, 3) and traj.log_pf.shape == traj.log_pb.shape == (32, 100)
    assert (traj.states[:, 0] == 0).all() and (traj.log_pb[:, 0] == 0).all()


def _run(rollout, policy, target, direction, exploration=0.0, flow=None, seed=3, n=6, **kw):
    if direction == "forward":
        return rollout.forward(policy, target, noise(seed, n, **kw), flow=flow, exploration=exploration)
    x1 = target.sample(n, torch.Generator().manual_seed(seed + 100))  # n = the global batch
    x1 = x1[kw.get("rank", 0) :: kw.get("world_size", 1)]
    return rollout.backward(policy, target, x1, noise(seed, n, **kw), flow=flow)


@pytest.mark.parametrize("direction,exploration", [("forward", 0.0), ("forward", 0.4), ("backward", 0.0)])
@pytest.mark.parametrize("lp", [False, True])
@pytest.mark.parametrize("learn_variance", [False, True])
def test_loop_and_batched_paths_agree(direction, exploration, lp, learn_variance, float64):
    """float64, so that "equal" can be checked to 1e-9 (float32 differs by summation order only)."""
    target = GaussianTarget(MU, 2.0, log_z=0.3)
    results = {}
    for vectorize in ("false", "true"):
        torch.manual_seed(0)
        policy = langevin(3) if lp else randomise_last_layer(PISPolicy(3))
        flow = FlowNet(3)
        log_z = torch.nn.Parameter(torch.tensor(0.5))
        rollout = DiffusionRollout(T=12, sigma2=2.0, learn_variance=learn_variance, vectorize=vectorize)
        traj = _run(rollout, policy, target, direction, exploration, flow=flow)
        loss = TrajectoryBalance()(**traj.terms(), log_z=log_z) + SubTrajectoryBalance()(**traj.terms())
        loss.backward()
        grads = [p.grad.clone() for p in [*policy.parameters(), *flow.parameters(), log_z]]
        assert all(g.abs().sum() > 0 for g in grads[-3:])  # flow and log Z are trained
        results[vectorize] = (traj, loss.detach(), grads)
    (a, la, ga), (b, lb, gb) = results["false"], results["true"]
    # the batched rollout computes the time features on the whole grid at once, the loop one step
    # at a time: the states agree up to rounding, not bit for bit
    torch.testing.assert_close(a.states, b.states, rtol=1e-12, atol=1e-12)
    for name in ("log_pf", "log_pb", "log_f", "log_r"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(la, lb, rtol=1e-9, atol=1e-9)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_batched_without_grad_takes_log_pf_from_the_rollout():
    target = GaussianTarget(MU, 1.0, log_z=0.0)
    policy = randomise_last_layer(PISPolicy(3))
    trajs = []
    for vectorize in ("false", "auto"):
        with torch.no_grad():
            trajs.append(DiffusionRollout(T=8, vectorize=vectorize).forward(policy, target, noise(0, 5)))
    torch.testing.assert_close(trajs[0].log_pf, trajs[1].log_pf, rtol=0, atol=0)
    assert not trajs[1].log_pf.requires_grad


def test_langevin_grad_is_computed_once_per_state():
    target = CountingEnergy(GaussianTarget(MU, 1.0, log_z=0.0))
    rollout = DiffusionRollout(T=7, vectorize="true")
    rollout.forward(langevin(3), target, noise(0, 4))
    assert target.grad_rows == 4 * 7  # x_0 .. x_6, reused by the batched recompute
    target.grad_rows = 0
    rollout.backward(langevin(3), target, torch.randn(4, 3), noise(0, 4))
    assert target.grad_rows == 4 * 7


def test_forward_rollout_has_no_gradient_through_the_trajectory_but_pis_has():
    target = GaussianTarget(MU, 1.0, log_z=0.0)
    policy = randomise_last_layer(PISPolicy(3))
    for vectorize in ("true", "false"):
        traj = DiffusionRollout(T=5, vectorize=vectorize).forward(policy, target, noise(0, 4))
        assert not traj.states.requires_grad and not traj.log_r.requires_grad and traj.log_pf.requires_grad
    traj = DiffusionRollout(T=5).forward(policy, target, noise(0, 4), reparametrise=True)
    assert traj.states.requires_grad and traj.log_r.requires_grad and traj.log_pb.requires_grad


def test_pis_loss_and_reparametrised_gradient_in_closed_form(float64):
    """Constant drift b: x_1 = b + s W_1, S_F - S_B = log N(x_1; b, s2) does not depend on b, so
    d loss / d b = (1/d) mean_b (x_1 - mu) / s2 at b = mu, and the loss is -log Z / d."""
    target, s2 = GaussianTarget(MU, 2.0, log_z=1.5), 2.0
    policy = exact_policy(target)
    traj = DiffusionRollout(T=20, sigma2=s2).forward(policy, target, noise(4, 16), reparametrise=True)
    loss = PathIntegralSampler(dim=3)(**traj.terms())
    torch.testing.assert_close(loss, torch.tensor(-1.5 / 3))
    loss.backward()
    expected = ((traj.states[:, -1].detach() - target.mu) / s2).mean(0) / 3
    torch.testing.assert_close(policy.joint[-1].bias.grad[:3], expected, atol=1e-8, rtol=1e-6)


def test_bridge_draw_has_brownian_bridge_marginals():
    x1 = torch.tensor([[2.0, -1.0]]).repeat(20000, 1)
    T, s2 = 10, 2.0
    path = bridge_path(x1, T, s2, noise(0, 20000))  # [N, T+1, 2]
    assert (path[:, 0] == 0).all() and (path[:, -1] == x1).all()
    t = torch.arange(T + 1) / T
    mean, var = path.mean(0), path.var(0)
    torch.testing.assert_close(mean, t[:, None] * x1[0], atol=0.03, rtol=0)
    torch.testing.assert_close(var, (s2 * t * (1 - t))[:, None].expand(-1, 2), atol=0.03, rtol=0)
    cov = ((path[:, 3, 0] - mean[3, 0]) * (path[:, 7, 0] - mean[7, 0])).mean()  # s2 s (1 - t)
    assert abs(cov.item() - s2 * 0.3 * 0.3) < 0.03


def test_bridge_log_pb_matches_the_formula():
    states = torch.randn(2, 4, 3)  # T = 3
    s2, dt = 1.5, 1 / 3
    out = bridge_log_pb(states, s2)
    assert (out[:, 0] == 0).all()
    for i in (1, 2):
        r = i / (i + 1)
        var = r * s2 * dt
        expected = -0.5 * (3 * math.log(2 * math.pi * var) + ((states[:, i] - r * states[:, i + 1]) ** 2).sum(-1) / var)
        torch.testing.assert_close(out[:, i], expected)


@pytest.mark.parametrize("learn_variance", [False, True])
def test_exploration_widens_sampling_but_not_log_pf(learn_variance):
    target, s2, T, eps = GaussianTarget(MU, 1.0, log_z=0.0), 2.0, 6, 0.3
    policy = exact_policy(target)
    raw = 0.4
    with torch.no_grad():
        policy.joint[-1].bias[3:] = raw
    v = math.exp(4 * math.tanh(raw)) if learn_variance else 1.0
    rollout = DiffusionRollout(T=T, sigma2=s2, learn_variance=learn_variance)
    traj = rollout.forward(policy, target, noise(5, 8), exploration=eps)
    gen = noise(5, 8)
    xi = torch.stack([gen.normal(3, torch.float32) for _ in range(T)], dim=1)  # [B, T, d]: the same draws
    step = traj.states[:, 1:] - traj.states[:, :-1] - target.mu / T
    dt = 1 / T
    torch.testing.assert_close(step / xi, torch.full_like(step, math.sqrt(dt * s2 * v + eps**2)), rtol=1e-4, atol=1e-4)
    var = dt * s2 * v  # log p_F is the policy's own Gaussian
    expected = -0.5 * (3 * math.log(2 * math.pi * var) + (step**2).sum(-1) / var)
    torch.testing.assert_close(traj.log_pf, expected, rtol=1e-5, atol=1e-4)


def test_exploration_schedule():
    decay = Exploration(0.2, decay_steps=5000)
    assert [decay(s) for s in (0, 2500, 5000, 6000)] == pytest.approx([0.2, 0.1, 0.0, 0.0])
    const = Exploration(0.2, decay_steps=None)
    assert [const(s) for s in (0, 2500, 5000, 6000)] == pytest.approx([0.2] * 4)


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("vectorize", ["true", "false"])
def test_two_ranks_reproduce_one_process(direction, vectorize):
    target = GaussianTarget(MU, 1.0, log_z=0.0)
    policy, flow = langevin(3), FlowNet(3)
    rollout = DiffusionRollout(T=9, vectorize=vectorize)
    whole = _run(rollout, policy, target, direction, 0.2, flow=flow, n=8)
    for rank in (0, 1):
        part = _run(rollout, policy, target, direction, 0.2, flow=flow, n=8, rank=rank, world_size=2)
        assert part.states.shape[0] == 4
        for name in ("states", "log_pf", "log_pb", "log_r", "log_f"):
            torch.testing.assert_close(getattr(part, name), getattr(whole, name)[rank::2], rtol=1e-5, atol=1e-5)


def test_rank_noise_select_callable():
    a = noise(0, 6, select=lambda t: t[2:4]).normal(2, torch.float32)
    b = noise(0, 6).normal(2, torch.float32)
    assert noise(0, 6, select=lambda t: t[2:4]).batch == 2
    torch.testing.assert_close(a, b[2:4], rtol=0, atol=0)


def test_flow_outputs_and_forward_looking_flow():
    target = GaussianTarget(MU, 1.0, log_z=0.7)
    rollout = DiffusionRollout(T=5, sigma2=1.0)
    traj = rollout.forward(exact_policy(target), target, noise(0, 4), flow=ExactFlow(target))
    assert traj.log_f.shape == (4, 6)
    torch.testing.assert_close(traj.log_f[:, 0], torch.full((4,), 0.7))
    torch.testing.assert_close(traj.log_f[:, -1], traj.log_r)
    net = FlowNet(3)
    fl = ForwardLookingFlow(net, sigma2=1.0, T=5)
    traj = rollout.forward(exact_policy(target), target, noise(0, 4), flow=fl)
    x = traj.states[:, 2]
    t = torch.full((4,), 0.4)
    expected = net(x, t) + 0.6 * reference_log_prob(x, t, 1.0, 0.2) + 0.4 * target.log_reward(x)
    torch.testing.assert_close(traj.log_f[:, 2], expected)


def test_errors_name_the_argument():
    for kwargs, arg in [
        ({"T": 0}, "T"),
        ({"T": 2.5}, "T"),
        ({"sigma2": 0.0}, "sigma2"),
        ({"sigma2": -1.0}, "sigma2"),
        ({"vectorize": "sometimes"}, "vectorize"),
        ({"learn_variance": True, "log_var_range": 0.0}, "log_var_range"),
    ]:
        with pytest.raises(ArgumentError, match=f"^{arg}: ") as info:
            DiffusionRollout(**kwargs)
        assert info.value.arg == arg and len(str(info.value).splitlines()) == 1
    with pytest.raises(ArgumentError) as info:
        Exploration(-0.1)
    assert info.value.arg == "factor"
    with pytest.raises(ArgumentError) as info:
        Exploration(0.1, decay_steps=0)
    assert info.value.arg == "decay_steps"
    target = GaussianTarget(MU, 1.0, log_z=0.0)
    with pytest.raises(ArgumentError) as info:
        DiffusionRollout(T=3).forward(PISPolicy(3), target, noise(0, 2), exploration=-0.5)
    assert info.value.arg == "exploration"
    with pytest.raises(ArgumentError) as info:
        DiffusionRollout(T=3, vectorize=True).forward(PISPolicy(3), target, noise(0, 2), reparametrise=True)
    assert info.value.arg == "vectorize"
    for kwargs, arg in [({"rank": 2, "world_size": 2}, "rank"), ({"global_batch": 0}, "global_batch")]:
        with pytest.raises(ArgumentError) as info:
            RankNoise(torch.Generator(), **{"global_batch": 4, **kwargs})
        assert info.value.arg == arg
    for kwargs, arg in [({"sigma2": 0.0, "T": 3}, "sigma2"), ({"sigma2": 1.0, "T": 0}, "T")]:
        with pytest.raises(ArgumentError) as info:
            ForwardLookingFlow(FlowNet(3), **kwargs)
        assert info.value.arg == arg


def test_a_policy_compiled_in_place_keeps_its_batched_forward():
    """model.compile=true compiles the policy's forward in place: training rollouts then take log p_F
    from that (batched) forward rather than replaying recorded activations; the values agree."""
    target = GaussianTarget(MU, 1.0, log_z=0.0)
    plain = randomise_last_layer(PISPolicy(3))
    compiled = randomise_last_layer(PISPolicy(3))
    compiled._compiled_call_impl = compiled.forward  # what nn.Module.compile() installs, minus inductor
    rollout = DiffusionRollout(T=6)
    a, b = (rollout.forward(p, target, noise(0, 5)) for p in (plain, compiled))
    assert "_tape" in plain.__dict__ and "_tape" not in compiled.__dict__
    torch.testing.assert_close(a.log_pf, b.log_pf)
