"""MCL's sparse path (model.sparse): each expert's gradient forward on its winners only.

Without dropout it must give the dense path's objective and gradients exactly (up to float
rounding); with dropout the routing and gradient forwards draw different masks, as in the
reference (routing under no_grad in train mode, then a second forward on the winners).
"""

from pathlib import Path

import pytest
import torch

from mixlab.core.config import build
from mixlab.core.errors import ConfigError
from mixlab.core.pipeline import train
from mixlab.mcl.assignment import weighted_expert_losses
from mixlab.mcl.sparse import sparse_expert_losses
from mixlab.score.schedule import LogUniformSigma

HARD = ["experiment=mcl_k4_hard", "debug=smoke"]
RESILIENT = ["experiment=mcl_k4_resilient", "debug=smoke"]
CLOSE = dict(atol=1e-6, rtol=1e-4)


def _batch(n: int = 24, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1
    return x0, LogUniformSigma()(n, generator=gen), torch.randn(x0.shape, generator=gen)


def _system(make_cfg, overrides, sparse: str, dropout: float = 0.0):
    torch.manual_seed(0)
    return build(
        make_cfg(*overrides, f"model.net.dropout={dropout}", f"model.sparse={sparse}", out=f"sparse-{sparse}").model
    ).train()


def _pair(make_cfg, overrides):
    dense, sparse = _system(make_cfg, overrides, "false"), _system(make_cfg, overrides, "true")
    sparse.load_state_dict(dense.state_dict())
    assert not dense.sparse and sparse.sparse
    return dense, sparse


def _step(system, batch):
    system.zero_grad(set_to_none=True)
    step = system.step_losses(*batch)
    step.loss.backward()
    return step, {name: p.grad for name, p in system.named_parameters()}


def test_sparse_expert_losses_equal_the_dense_formula_for_any_zero_pattern():
    m = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [1.5, 2.5, 3.5]])
    calls = []

    def expert_loss(k, idx):
        calls.append((k, idx.tolist()))
        return m[idx, k]

    for weights, norm in (
        (torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]]), "per_expert"),
        (torch.tensor([[0.5, 0, 0], [0, 1, 0], [0.2, 0.7, 0], [1, 0, 0]]), "batch"),
    ):
        totals = weights.sum(0) if norm == "per_expert" else torch.full((3,), 4.0)
        calls.clear()
        got = sparse_expert_losses(expert_loss, weights, norm, totals)
        torch.testing.assert_close(got, weighted_expert_losses(m, weights, norm, totals))
        assert got[2] == 0 and [k for k, _ in calls] == [0, 1]  # expert 2 (no sample) is never run
    assert calls == [(0, [0, 2, 3]), (1, [1, 2])]  # each expert sees only its nonzero-weight samples


@pytest.mark.parametrize("overrides", [HARD, RESILIENT], ids=["hard", "resilient"])
def test_sparse_gradients_equal_the_dense_path(make_cfg, overrides):
    dense, sparse = _pair(make_cfg, overrides)
    batch = _batch()
    if overrides is RESILIENT:  # untrained heads send every sample to one expert: centre each head's
        with torch.no_grad():  # scores on this batch so that their argmax spreads over the experts
            x0, sigma, noise = batch
            dense.scorer.stacked["head__2__bias"].zero_()
            scores = dense.expert_scores(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma)  # [B, K]
            dense.scorer.stacked["head__2__bias"].sub_(scores.mean(0).reshape(-1, 1))
        sparse.load_state_dict(dense.state_dict())
    d_step, d_grads = _step(dense, batch)
    s_step, s_grads = _step(sparse, batch)
    assert torch.equal(d_step.winners, s_step.winners) and int((s_step.winners.sum(0) > 0).sum()) >= 2  # not a one-expert case
    torch.testing.assert_close(s_step.routing, d_step.routing, **CLOSE)
    torch.testing.assert_close(s_step.expert_losses, d_step.expert_losses, **CLOSE)
    torch.testing.assert_close(s_step.loss, d_step.loss, **CLOSE)
    assert set(s_grads) == set(d_grads) and any(".stacked." in name for name in s_grads)
    if overrides is RESILIENT:
        assert any(name.startswith("scorer.") for name in s_grads)
        torch.testing.assert_close(s_step.head_loss, d_step.head_loss, **CLOSE)
    for name, grad in s_grads.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, d_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_an_expert_that_won_nothing_gets_a_zero_gradient(make_cfg):
    system = _system(make_cfg, HARD, "auto")
    assert system.sparse  # auto: hard WTA's weights are one-hot
    with torch.no_grad():
        system.experts.stacked["out__2__bias"][3] += 100.0  # expert 3 predicts eps + 100: loses every sample
    step, grads = _step(system, _batch())
    assert step.winners[:, 3].sum() == 0 and step.expert_losses[3] == 0
    stacked = {name: g for name, g in grads.items() if ".stacked." in name}
    assert stacked and all(g is not None for g in stacked.values())  # DDP and per-expert clipping see every tensor
    assert all(g[3].abs().sum() == 0 for g in stacked.values())
    assert sum(float(g[:3].abs().sum()) for g in stacked.values()) > 0
    system.configure_gradient_clipping(None, 1.0)  # per-expert clipping: the zero slice stays zero (no 0/0)
    assert all(torch.isfinite(g).all() and g[3].abs().sum() == 0 for g in stacked.values())


@pytest.mark.parametrize("assignment", ["annealed", "relaxed"])
def test_sparse_true_with_a_soft_rule_is_a_config_error(make_cfg, assignment):
    cfg = make_cfg("experiment=mcl_k4", "debug=smoke", f"model/assignment={assignment}", "model.sparse=true")
    with pytest.raises(ConfigError, match="^model.sparse: true needs one-hot weights"):
        build(cfg.model)
    with pytest.raises(ConfigError, match="^model.sparse:"):
        train(cfg)  # fails before any training
    with pytest.raises(ConfigError, match="^model.sparse: must be 'auto', True or False, got 'maybe'"):
        build(make_cfg("experiment=mcl_k4", "debug=smoke", "model.sparse=maybe").model)
    assert not build(make_cfg("experiment=mcl_k4", "debug=smoke", f"model/assignment={assignment}").model).sparse  # auto: dense
    assert build(make_cfg(*RESILIENT).model).sparse


def test_with_dropout_the_gradient_forward_draws_a_new_mask(make_cfg):
    batch = _batch(n=1)  # one sample: the winner's loss is that sample's gradient-forward loss
    for dropout in (0.0, 0.5):
        sparse = _system(make_cfg, HARD, "true", dropout)
        dense = _system(make_cfg, HARD, "false", dropout)
        dense.load_state_dict(sparse.state_dict())
        s, d = sparse.step_losses(*batch), dense.step_losses(*batch)
        k = int(s.winners[0].argmax())
        routed = s.routing[0, k]  # the no-grad routing forward's loss of the winner on this sample
        if dropout == 0.0:
            torch.testing.assert_close(s.expert_losses[k], routed, **CLOSE)
        else:
            assert abs(float(s.expert_losses[k].detach()) - float(routed)) > 1e-4 * float(routed)  # a second dropout mask
        # the dense path trains on the very forward it routes with
        kd = int(d.winners[0].argmax())
        torch.testing.assert_close(d.expert_losses[kd], d.routing[0, kd], **CLOSE)


@pytest.mark.slow
def test_sparse_ddp_and_dense_training_reach_the_one_process_sparse_weights(make_cfg):
    exact = [*HARD, "model.net.dropout=0.0", "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=0.05"]
    runs = {
        "sparse": ["model.sparse=true"],
        "dense": ["model.sparse=false"],
        "sparse_ddp": ["model.sparse=true", "trainer=ddp_cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"],
    }
    weights = {}
    for out, extra in runs.items():
        cfg = make_cfg(*exact, *extra, out=out)
        train(cfg)
        weights[out] = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)[
            "current_model_state"
        ]
    for other in ("dense", "sparse_ddp"):
        for key, value in weights["sparse"].items():
            torch.testing.assert_close(weights[other][key], value, atol=1e-5, rtol=1e-4, msg=f"{other}: {key}")
