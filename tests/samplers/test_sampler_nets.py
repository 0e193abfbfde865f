"""Sampler networks (PIS architecture) and the Langevin parametrisation, against hand computations."""

import math

import pytest
import torch
from closed_form import randomise_last_layer

from mixlab.core.errors import ArgumentError
from mixlab.samplers.langevin import LangevinPolicy, clean_grad, langevin_output, langevin_policy
from mixlab.samplers.nets import FlowNet, ForwardLookingFlow, FourierFeatures, LangevinScale, PISPolicy, reference_log_prob


def test_fourier_features_grid_and_learned_phase():
    ff = FourierFeatures(64)
    torch.testing.assert_close(ff.freqs, torch.linspace(0.1, 100, 64))
    assert ff.phase.requires_grad and ff.phase.shape == (64,)
    t = torch.tensor([0.0, 0.37, 1.0])
    out = ff(t)
    assert out.shape == (3, 128)
    arg = 0.37 * ff.freqs + ff.phase
    torch.testing.assert_close(out[1], torch.cat([arg.sin(), arg.cos()]))


def test_pis_policy_shapes_zero_init_and_clip():
    policy = PISPolicy(5)
    x, t = torch.randn(7, 5), torch.rand(7)
    out = policy(x, t)
    assert out.shape == (7, 10) and (out == 0).all()  # zero-initialised last layer
    assert policy.t_embed[1].in_features == 128 and policy.s_embed.out_features == 64
    with torch.no_grad():
        policy.joint[-1].bias.fill_(3e4)
        policy.joint[-1].bias[:2] = -5e4
    out = policy(x, t)
    assert (out[:, :2] == -1e4).all() and (out[:, 2:] == 1e4).all()
    assert (policy.unclipped(x, t)[:, 2:] == 3e4).all()
    assert PISPolicy.needs_grad is False


def test_langevin_scale_starts_at_its_bias():
    t = torch.rand(6)
    scalar, per_dim = LangevinScale(4), LangevinScale(4, per_dimension=True)
    torch.testing.assert_close(scalar(t), torch.full((6, 1), 0.01))
    torch.testing.assert_close(per_dim(t), torch.full((6, 4), 0.01))
    assert (scalar.net[-1].weight == 0).all()
    assert scalar.net[1].in_features == 128 and sum(isinstance(m, torch.nn.Linear) for m in scalar.net) == 4


def test_langevin_policy_adds_scaled_clean_gradient():
    torch.manual_seed(0)
    net = randomise_last_layer(PISPolicy(3))
    scale = LangevinScale(3, per_dimension=True)
    with torch.no_grad():
        scale.net[-1].weight.normal_(0, 0.1)
    policy = LangevinPolicy(net, scale)
    x, t = torch.randn(4, 3), torch.rand(4)
    grad = torch.randn(4, 3) * 50
    grad[0, 0], grad[1, 1], grad[2, 2] = float("nan"), 500.0, -float("inf")
    grad.requires_grad_(True)
    out = policy(x, t, grad)
    g = grad.detach().clone()
    g[0, 0], g[1, 1], g[2, 2] = 0.0, 100.0, -100.0
    g = g.clamp(-100, 100)
    raw = net(x, t)
    torch.testing.assert_close(out[:, :3], raw[:, :3] + scale(t) * g)
    torch.testing.assert_close(out[:, 3:], raw[:, 3:])
    out.sum().backward()
    assert grad.grad is None  # grad log R is detached
    assert LangevinPolicy.needs_grad is True


def test_langevin_output_is_clipped_after_the_sum():
    out = torch.tensor([[9e3, 1.0, 2e4, 0.0]])  # d = 2: [u | raw]
    res = langevin_output(out, torch.tensor([[20.0]]), torch.tensor([[60.0, 1.0]]), 100.0, 1e4)
    torch.testing.assert_close(res, torch.tensor([[1e4, 21.0, 1e4, 0.0]]))
    torch.testing.assert_close(clean_grad(torch.tensor([float("nan"), 3.0, 1e9])), torch.tensor([0.0, 3.0, 100.0]))


def test_flow_net_and_forward_looking_flow():
    torch.manual_seed(0)
    net = FlowNet(3)
    x, t, log_r = torch.randn(5, 3), torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]), torch.randn(5)
    assert net(x, t).shape == (5,)
    fl = ForwardLookingFlow(net, sigma2=2.0, T=10)
    var = 2.0 * torch.tensor([0.1, 0.1, 0.5, 0.9, 1.0])  # sigma2 max(i, 1) dt
    log_n = -0.5 * (3 * torch.log(2 * math.pi * var) + (x**2).sum(-1) / var)
    torch.testing.assert_close(reference_log_prob(x, t, 2.0, 0.1), log_n)
    torch.testing.assert_close(fl(x, t, log_r), net(x, t) + (1 - t) * log_n + t * log_r)
    assert FlowNet.uses_log_r is False and ForwardLookingFlow.uses_log_r is True
    with pytest.raises(ValueError):
        fl(x, t)


def test_net_errors_name_the_argument():
    for build, arg in [
        (lambda: PISPolicy(0), "dim"),
        (lambda: PISPolicy(2, clip=0.0), "clip"),
        (lambda: FlowNet(0), "dim"),
        (lambda: langevin_policy(2, scale_layers=0), "scale_layers"),
        (lambda: LangevinPolicy(PISPolicy(2), LangevinScale(), grad_clip=-1.0), "grad_clip"),
    ]:
        with pytest.raises(ArgumentError) as info:
            build()
        assert info.value.arg == arg and len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("drift_only", [False, True])
@pytest.mark.parametrize("lp", [False, True])
def test_recorded_rollout_replays_forward_and_its_gradient(lp, drift_only, monkeypatch):
    """record (one step at a time, no grad) + replay (all steps, the recorded activations) = forward
    at every state and autograd's gradient of it; the replayed backward in blocks of 2 steps."""
    import mixlab.samplers.nets as nets

    monkeypatch.setattr(nets, "CHUNK_ROWS", 14)  # 2 steps of 7 rows per block
    torch.manual_seed(0)
    B, T, d = 7, 5, 3
    if lp:
        policy = langevin_policy(d, hidden=16, harmonics=8, zero_init=False, scale_init=0.3)
    else:
        policy = PISPolicy(d, hidden=16, harmonics=8, zero_init=False)
    x, g = torch.randn(T, B, d), torch.randn(T, B, d)
    grid = torch.arange(T) / T
    tape = policy.new_tape(grid, B, x)
    for i in range(T):
        torch.testing.assert_close(policy.record(x[i], g[i], tape, i), policy(x[i], grid[i : i + 1], g[i]))
    cols = d if drift_only else 2 * d
    w = torch.randn(T, B, cols)
    replayed = policy.replay(g, tape, drift_only=drift_only)
    (replayed * w).sum().backward()
    ours = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    direct = policy(x, grid[:, None], g)[..., :cols]
    (direct * w).sum().backward()
    torch.testing.assert_close(replayed, direct)
    for name, p in policy.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_tape_overwritten_before_backward_raises():
    policy = PISPolicy(2, hidden=8, harmonics=4, zero_init=False)
    grid, x = torch.arange(3) / 3, torch.randn(4, 2)
    tape = policy.new_tape(grid, 4, x)
    for i in range(3):
        policy.record(x, None, tape, i)
    loss = policy.replay(None, tape).sum()
    policy.new_tape(grid, 4, x)  # the next rollout reuses the buffers
    with pytest.raises(RuntimeError, match="overwritten"):
        loss.backward()


def test_flow_sharing_the_policy_embeddings_owns_only_its_mlp():
    """The reference's conditional flow: (s_emb + t_emb of the policy) -> joint MLP, 8,385
    parameters of its own; the flow loss trains the policy's embeddings too."""
    policy = PISPolicy(32)
    flow = FlowNet(32, share_embeddings=True, policy=policy)
    assert sum(p.numel() for p in flow.parameters()) == 8385
    assert sum(p.numel() for p in FlowNet(32).parameters()) == 22977
    x, t = torch.randn(5, 32), torch.rand(5)
    torch.testing.assert_close(flow(x, t), flow.joint(policy.s_embed(x) + policy.t_embed(t)).squeeze(-1))
    flow(x, t).sum().backward()
    assert policy.s_embed.weight.grad.abs().sum() > 0 and policy.t_embed[1].weight.grad.abs().sum() > 0
    assert policy.joint[-1].weight.grad is None  # only the embeddings are shared
    lp = langevin_policy(2)
    assert FlowNet(2, share_embeddings=True, policy=lp).embed(x[:, :2], t).shape == (5, 64)


@pytest.mark.parametrize(
    "kwargs,arg", [({"share_embeddings": True}, "share_embeddings"), ({"share_embeddings": True, "hidden": 32}, "hidden")]
)
def test_flow_sharing_errors_name_the_argument(kwargs, arg):
    policy = None if "hidden" not in kwargs else PISPolicy(2)
    with pytest.raises(ArgumentError) as err:
        FlowNet(2, policy=policy, **kwargs)
    assert err.value.arg == arg


def test_copies_of_a_policy_leave_its_tape_behind():
    import copy
    import pickle

    policy = PISPolicy(2, hidden=8, harmonics=4)
    grid, x = torch.arange(3) / 3, torch.randn(4, 2)
    policy.new_tape(grid, 4, x)
    for clone in (copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
        assert "_tape" not in clone.__dict__ and "_tape" in policy.__dict__
        torch.testing.assert_close(clone(x, grid[:1]), policy(x, grid[:1]))
