"""N processes = 1 process for the classifiers: BatchNorm over the global batch (GlobalBatchNorm),
gate noise drawn for the global batch and sliced by rank, the balance loss on the global usage."""

from pathlib import Path

import pytest
import torch

from mixlab.core.pipeline import train

# SGD as in support.EXACT (Adam turns reduction-order rounding into lr-sized steps on ~0 gradients);
# dropout off: its masks are per process.
EXACT = [
    "debug=smoke",
    "trainer.max_epochs=1",
    "model.optimizer._target_=torch.optim.SGD",
    "model.optimizer.lr=0.02",
    "model.net.dropout=0.0",
    "test_after_fit=false",
]


def _weights(run_dir: str) -> dict:
    ckpt = torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt.get("current_model_state") or ckpt["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment,extra",
    [
        ("pretrain_task_a", ["data.subset=1"]),
        ("moe_task_a", ["model.net.gate_dropout=0.0"]),  # gate noise stays on: drawn for the global batch
    ],
)
def test_two_processes_reach_the_weights_of_one(make_cfg, experiment, extra):
    one = make_cfg(f"experiment={experiment}", *EXACT, *extra, out="one")
    train(one)
    two = make_cfg(
        f"experiment={experiment}",
        *EXACT,
        *extra,
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        out="two",
    )
    train(two)
    w1, w2 = _weights(one.paths.output_dir), _weights(two.paths.output_dir)
    assert any("running_mean" in k for k in w1)  # BatchNorm statistics are compared too
    for key in w1:
        torch.testing.assert_close(w1[key].float(), w2[key].float(), atol=1e-5, rtol=1e-4, msg=key)
