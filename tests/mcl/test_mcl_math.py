"""MCL math on hand-made cases: assignment weights, per-expert losses, stacked experts, clipping."""

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mixlab.core.config import build
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.mcl.assignment import AnnealedWTA, HardWTA, RelaxedWTA, ResilientMCL, weighted_expert_losses
from mixlab.metrics.expert_stats import dead_experts, effective_experts, usage_shares
from mixlab.nets.scorenet import ScoreNet
from mixlab.nets.stacked import StackedExperts, clip_grad_norm_per_expert

LOSSES = torch.tensor([[1.0, 2.0, 3.0], [5.0, 4.0, 6.0], [2.0, 2.0, 9.0]])  # row 3: a tie between experts 0 and 1


def test_hard_wta_one_hot_winner_ties_to_lowest_index():
    w, winners = HardWTA()(LOSSES)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0]]))
    assert torch.equal(w, winners)


def test_relaxed_wta_gives_losers_alpha():
    w, winners = RelaxedWTA(alpha=0.1)(LOSSES)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [1.0, 0.1, 0.1]]))
    torch.testing.assert_close(winners, HardWTA()(LOSSES)[0])
    with pytest.raises(ArgumentError, match="^alpha: must be <= 1, got 1.5"):
        RelaxedWTA(alpha=1.5)
    node = {"model": {"assignment": {"_target_": "mixlab.mcl.assignment.RelaxedWTA", "alpha": -0.1}}}
    with pytest.raises(ConfigError, match="^model.assignment.alpha: must be >= 0, got -0.1"):  # built from a config: the full key
        build(OmegaConf.create(node).model.assignment)


def test_annealed_wta_limits_and_a_hand_computed_softmax():
    w, _ = AnnealedWTA()(LOSSES, temperature=1.0)
    e = torch.exp(torch.tensor([-1.0, -2.0, -3.0]))
    torch.testing.assert_close(w[0], e / e.sum())
    cold, _ = AnnealedWTA()(LOSSES[:2], temperature=1e-4)  # tau -> 0: hard WTA (no ties here)
    torch.testing.assert_close(cold, HardWTA()(LOSSES[:2])[0])
    tie, _ = AnnealedWTA()(LOSSES[2:], temperature=1e-4)  # a tie splits the weight evenly
    torch.testing.assert_close(tie, torch.tensor([[0.5, 0.5, 0.0]]))
    hot, _ = AnnealedWTA()(LOSSES, temperature=1e6)  # tau -> inf: uniform
    torch.testing.assert_close(hot, torch.full((3, 3), 1 / 3), atol=1e-5, rtol=0)
    assert (w.sum(1) - 1).abs().max() < 1e-6
    with pytest.raises(RuntimeError, match="temperature"):
        AnnealedWTA()(LOSSES)


def test_resilient_routes_by_scores_and_heads_learn_the_true_winner():
    scores = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    w, winners = ResilientMCL()(LOSSES, scores=scores)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]]))
    assert torch.equal(w, winners)  # usage = head-routed share, as in the reference
    target = torch.tensor([0, 1, 0])
    expected = -torch.log_softmax(scores, 1)[torch.arange(3), target].mean()
    torch.testing.assert_close(ResilientMCL.head_loss(scores, LOSSES), expected)


def test_weighted_expert_losses_per_expert_and_batch():
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    w = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.1]])
    per = weighted_expert_losses(m, w, "per_expert")
    torch.testing.assert_close(per, torch.tensor([(1 + 0.3 + 5) / 2.1, (0.2 + 4 + 0.6) / 1.2]))
    torch.testing.assert_close(weighted_expert_losses(m, w, "batch"), torch.tensor([6.3 / 3, 4.8 / 3]))
    hard = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # expert 1 won nothing: loss exactly 0
    assert weighted_expert_losses(m, hard)[1] == 0


def test_hard_wta_gives_zero_gradient_to_losers():
    torch.manual_seed(0)
    experts = StackedExperts(nn.Linear(3, 1), 3, vectorize=True)
    with torch.no_grad():
        experts.stacked["bias"][2] += 100.0  # expert 2 loses every sample
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    m = (experts(x) - y).pow(2).squeeze(-1).transpose(0, 1)  # [B, K]
    w, _ = HardWTA()(m.detach())
    weighted_expert_losses(m, w).sum().backward()
    grad = experts.stacked["weight"].grad  # [K, 1, 3]
    for k in range(3):
        won = w[:, k].bool()
        if not won.any():
            assert grad[k].abs().sum() == 0
            continue
        # the winner's gradient is that of the plain mean loss over the samples it won
        single = nn.Linear(3, 1)
        single.weight.data, single.bias.data = (
            experts.stacked["weight"][k].detach().clone(),
            experts.stacked["bias"][k].detach().clone(),
        )
        (single(x[won]) - y[won]).pow(2).mean().backward()
        torch.testing.assert_close(grad[k], single.weight.grad)
    assert w[:, 2].sum() == 0 and grad[2].abs().sum() == 0 and grad[:2].abs().sum() > 0


def _tiny_scorenet(dropout=0.0):
    return ScoreNet(base_ch=8, ch_mult=[1, 2], num_res_blocks=1, time_dim=16, dropout=dropout)


def test_vectorised_experts_equal_the_loop_forward_and_backward():
    torch.manual_seed(0)
    vec = StackedExperts(_tiny_scorenet(), 4, vectorize=True)
    loop = copy.deepcopy(vec)
    loop.vectorize = False
    x, c = torch.randn(5, 1, 28, 28), torch.randn(5)
    out_v, out_l = vec(x, c), loop(x, c)
    assert out_v.shape == (4, 5, 1, 28, 28)
    torch.testing.assert_close(out_v, out_l, atol=1e-5, rtol=1e-4)
    (out_v * torch.arange(4.0).reshape(4, 1, 1, 1, 1)).pow(2).mean().backward()
    (out_l * torch.arange(4.0).reshape(4, 1, 1, 1, 1)).pow(2).mean().backward()
    for (name, pv), pl in zip(vec.stacked.items(), loop.stacked.values()):
        torch.testing.assert_close(pv.grad, pl.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert pv.grad[0].abs().sum() == 0 and pv.grad[1].abs().sum() > 0  # expert 0 got weight 0
    torch.testing.assert_close(vec.expert(2, x, c), out_v[2], atol=1e-5, rtol=1e-4)


def test_experts_are_independently_initialised():
    experts = StackedExperts(_tiny_scorenet(), 3)
    w = experts.stacked["conv_in__weight"] if "conv_in__weight" in experts.stacked else next(iter(experts.stacked.values()))
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    with pytest.raises(ValueError):
        StackedExperts(_tiny_scorenet(), 0)


def test_per_expert_clipping_equals_separate_clip_grad_norm():
    torch.manual_seed(0)
    experts = StackedExperts(nn.Linear(4, 2), 3)
    grads = {name: torch.randn_like(p) * scale for (name, p), scale in zip(experts.stacked.items(), (5.0, 0.01))}
    for name, p in experts.stacked.items():
        p.grad = grads[name].clone()
    clip_grad_norm_per_expert(experts.per_expert_parameters(), 1.0)
    for k in range(3):
        ref = [grads[name][k].clone().requires_grad_() for name in grads]
        for r in ref:
            r.grad = r.detach().clone()
        torch.nn.utils.clip_grad_norm_(ref, 1.0)
        for name, r in zip(grads, ref):
            torch.testing.assert_close(experts.stacked[name].grad[k], r.grad)


def test_usage_statistics():
    shares = usage_shares(torch.tensor([40.0, 31.0, 29.0, 0.0]))
    torch.testing.assert_close(shares, torch.tensor([0.40, 0.31, 0.29, 0.0]))
    assert dead_experts(shares, 0.01) == 1
    assert effective_experts(torch.full((4,), 0.25)) == pytest.approx(4.0)
    assert effective_experts(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    torch.testing.assert_close(usage_shares(torch.zeros(4)), torch.full((4,), 0.25))


def test_bench_mcl_plans_the_baseline_then_every_mcl_path():
    from tools.mcl.bench import plan

    rows = plan(4, torch.device("cpu"))
    assert [r[0] for r in rows] == [
        "baseline step (reference)",
        "annealed WTA K=4, dense loop",
        "annealed WTA K=4, dense vmap",
        "hard WTA K=4, dense loop",
        "hard WTA K=4, sparse",
    ]
    assert [r[1]["path"] for r in rows] == ["baseline", "dense", "dense", "dense", "sparse"]
    assert [r[0] for r in plan(4, torch.device("cpu"), ("sparse",))] == ["baseline step (reference)", "hard WTA K=4, sparse"]


def test_bench_mcl_sparse_step_backpropagates_fewer_expert_rows_than_dense(tmp_path):
    """Counted in expert-forward rows per step (one sample through one expert), on the same batch:
    dense K B with gradient; sparse B with gradient (each sample through its winner) + K B routing rows."""
    from tools.mcl.bench import main

    K, B = 3, 5
    rows = main(
        [
            "--experts",
            str(K),
            "--batch",
            str(B),
            "--rows",
            "hard-loop,sparse",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--dropout",
            "0",
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    baseline, dense, sparse = rows
    assert [r["path"] for r in rows] == ["baseline", "dense", "sparse"]
    assert (baseline["grad_rows"], baseline["nograd_rows"]) == (B, 0)
    assert (dense["grad_rows"], dense["nograd_rows"]) == (K * B, 0)
    assert (sparse["grad_rows"], sparse["nograd_rows"]) == (B, K * B)
    assert sparse["grad_rows"] < dense["grad_rows"]
    for r in rows:  # every ratio is this row's seconds over the reference's
        assert r["cost_vs_baseline"] == pytest.approx(r["sec_per_step"] / baseline["sec_per_step"])
        assert r["images_per_sec"] == pytest.approx(B / r["sec_per_step"])
    assert [r["variant"] for r in json.loads((tmp_path / "b.json").read_text())] == [r["variant"] for r in rows]


def test_bench_mcl_rejects_an_unknown_row(capsys):
    from tools.mcl.bench import main

    with pytest.raises(SystemExit):
        main(["--rows", "sparse,dense"])
    assert "--rows: choose from annealed-loop,annealed-vmap,hard-loop,sparse" in capsys.readouterr().err
