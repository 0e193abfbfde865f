"""2 CPU processes x B/2 reach the state of 1 process x B (weights, buffers, MALA step size, noise
generator) for TB with local search (replicated buffers, sliced MALA chains, all-reduced
acceptance), VarGrad (global-mean centre) and SubTB (a batch sum x world size). SGD, as in
tests/core/test_ddp.py: Adam would turn reduction-order rounding into lr-sized steps."""

from pathlib import Path

import pytest
import torch

from mixlab.core.pipeline import train

SGD = ["debug=smoke", "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=0.01"]
DDP = ["trainer=ddp_cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"]


def _last(cfg) -> dict:
    return torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment,extra",
    [
        ("sampler_gmm25_tb_expl_ls", []),
        ("sampler_funnel_vargrad_expl", []),
        ("sampler_gmm25_subtb", ["model.optimizer.lr=0.001", "model.lr_flow=0.001"]),
        ("sampler_gmm25_tb_expl_ls", ["model.buffer.draws=reference"]),
    ],
    ids=["tb_ls", "vargrad", "subtb", "tb_ls_reference_draws"],
)  # SubTB sums over the batch: smaller steps
def test_two_processes_reach_the_state_of_one(make_cfg, experiment, extra):
    one = make_cfg(f"experiment={experiment}", *SGD, *extra, out="one")
    train(one)
    two = make_cfg(f"experiment={experiment}", *SGD, *extra, *DDP, out="two")
    train(two)
    a, b = _last(one), _last(two)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"]["policy.joint.5.weight"].abs().sum() > 0  # zero-initialised last layer: training happened
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], atol=1e-5, rtol=1e-4, msg=key)
    assert torch.equal(a["mixlab_rng"]["noise"], b["mixlab_rng"]["noise"])  # the same draws in the same order
    sa, sb = a["sampler_state"], b["sampler_state"]
    for name in ("buffer", "ls_buffer"):
        if sa[name] is None:
            assert sb[name] is None
            continue
        assert sa[name]["x"].shape == sb[name]["x"].shape and len(sa[name]["x"]) > 0
        torch.testing.assert_close(sa[name]["x"], sb[name]["x"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sa[name]["log_r"], sb[name]["log_r"], atol=1e-4, rtol=1e-4)
        assert sa[name]["cursor"] == sb[name]["cursor"]  # reference draws: the same pending draw on every rank
        assert (sa[name]["queue"] is None and sb[name]["queue"] is None) or torch.equal(sa[name]["queue"], sb[name]["queue"])
    assert sa["ls_step_size"] == pytest.approx(sb["ls_step_size"], rel=1e-12)
    assert sa["ls_stats"].get("acceptance") == pytest.approx(sb["ls_stats"].get("acceptance"))
