"""The released-weights converter on a local snapshot written by the test (the download itself
needs huggingface.co): reference keys -> a mixlab checkpoint that the evaluators load."""

import json
import math

import pytest
import test_dit
import torch
from support import compose_eval

from mixlab.core.checkpoint import load_system
from mixlab.core.errors import ConfigError
from mixlab.sedd.evaluate import evaluate
from mixlab.sedd.pretrained import convert


@pytest.fixture
def snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(test_dit, "V", 50258)  # GPT-2 BPE + MASK, the released models' vocabulary
    sd = test_dit.reference_state_dict(seed=3)
    folder = tmp_path / "sedd-tiny"
    folder.mkdir()
    torch.save(sd, folder / "pytorch_model.bin")
    sizes = {
        "hidden_size": test_dit.H,
        "n_blocks": test_dit.N_BLOCKS,
        "n_heads": test_dit.N_HEADS,
        "cond_dim": test_dit.COND,
        "length": 64,
    }
    (folder / "config.json").write_text(json.dumps({"model": sizes}))
    return folder, sd


def test_a_converted_checkpoint_computes_the_reference_forward_and_evaluates(snapshot, data_dir, tmp_path):
    folder, sd = snapshot
    out = convert(str(folder), tmp_path / "ckpt" / "sedd-tiny.ckpt", data_dir=str(data_dir))
    system, cfg, _ = load_system(out)
    assert cfg.model.param.scale_by_sigma and cfg.model._target_.endswith("SEDD") and system.graph.dim == 50258
    x, sigma = torch.randint(0, 50257, (2, 16)), torch.tensor([0.3, 2.0])
    torch.testing.assert_close(system.net(x, sigma), test_dit.reference_forward(sd, x, sigma), atol=1e-4, rtol=1e-4)
    result = evaluate(
        compose_eval(
            f"ckpt={out}",
            "evaluator=sedd",
            "timesteps=2",
            "t_batch=2",
            "limit=2",
            "batch_size=2",
            data_dir=data_dir,
            out_dir=tmp_path / "eval",
        )
    )
    assert math.isfinite(result["nats_per_token"]) and result["tokens"] == 2 * 64


def test_a_snapshot_with_wrong_weights_is_one_line(snapshot, tmp_path):
    folder, sd = snapshot
    del sd["blocks.0.attn_qkv.weight"]
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="^source: .*blocks.0.attn"):
        convert(str(folder), tmp_path / "x.ckpt")
