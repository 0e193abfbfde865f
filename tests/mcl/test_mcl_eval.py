"""Gate training and the `mcl` evaluator on smoke checkpoints: every strategy, the comparison table,
clear errors for gates and experts."""

import math
from pathlib import Path

import pytest
import torch
from support import compose_eval

from mixlab.core.errors import ConfigError
from mixlab.core.pipeline import train
from mixlab.mcl.evaluate import evaluate


def eval_cfg(*overrides, data_dir, weights_dir, out_dir):
    return compose_eval("evaluator=mcl", *overrides, data_dir=data_dir, weights_dir=weights_dir, out_dir=out_dir)


@pytest.fixture(scope="module")
def mcl_ckpts(smoke_runs):
    experts = smoke_runs.run("mcl_k4_resilient")
    gate = smoke_runs.run("mcl_k4_gate", f"model.experts_ckpt={experts['last_ckpt']}")
    return Path(experts["last_ckpt"]), Path(gate["last_ckpt"]), gate


def test_gate_trains_on_frozen_experts(mcl_ckpts):
    experts_path, gate_path, summary = mcl_ckpts
    assert 0.0 <= summary["metrics"]["val/acc"] <= 1.0 and "train/loss" in summary["metrics"]
    experts = torch.load(experts_path, weights_only=False)["state_dict"]
    gate_state = torch.load(gate_path, weights_only=False)["state_dict"]
    for key, value in experts.items():  # the experts did not move while the gate trained
        torch.testing.assert_close(gate_state[f"experts.{key}"], value)
    assert any(k.startswith("gate.") for k in gate_state)


def test_gate_needs_an_mcl_checkpoint(make_cfg, data_dir, tmp_path):
    baseline = train(make_cfg("experiment=baseline", "debug=smoke", out="base"))
    with pytest.raises(ConfigError, match="^model.experts_ckpt: .* is a ScoreDiffusion checkpoint"):
        train(make_cfg("experiment=mcl_k4_gate", "debug=smoke", f"model.experts_ckpt={baseline['last_ckpt']}", out="g"))
    with pytest.raises(ConfigError, match="^model.experts_ckpt: give the trained MCL checkpoint"):
        train(make_cfg("experiment=mcl_k4_gate", "debug=smoke", out="g2"))


def test_eval_one_strategy_and_errors(mcl_ckpts, data_dir, weights_dir, tmp_path):  # noqa: F811
    experts, gate, _ = mcl_ckpts
    common = ["n=16", "steps=2", "batch_size=16", "protocols=[classifier]", "kid=false"]
    kw = dict(data_dir=data_dir, weights_dir=weights_dir, out_dir=tmp_path)
    result = evaluate(eval_cfg(f"ckpt={experts}", "strategy=single_expert", "expert=2", *common, **kw))
    assert result["strategy"] == "single_expert" and result["expert"] == 2
    fid = result["classifier"]["fid"]
    assert math.isfinite(fid) and fid > 1.0  # a 2-epoch smoke model is far from the data
    again = evaluate(
        eval_cfg(f"ckpt={experts}", "strategy=single_expert", "expert=2", *common, **{**kw, "out_dir": tmp_path / "again"})
    )
    assert again["classifier"] == result["classifier"]  # same seed, same samples, same numbers
    other = evaluate(eval_cfg(f"ckpt={experts}", "strategy=single_expert", "expert=0", *common, **kw))
    assert other["classifier"]["fid"] != fid  # another expert, other samples
    gated = evaluate(eval_cfg(f"ckpt={experts}", "strategy=gated", f"gate_ckpt={gate}", *common, **kw))
    assert gated["strategy"] == "gated" and Path(gated["metrics_json"]).is_file()
    assert evaluate(eval_cfg(f"ckpt={gate}", "strategy=committed_gate", *common, **kw))["strategy"] == "committed_gate"
    with pytest.raises(ConfigError, match="^gate_ckpt: this routing needs a trained gate"):
        evaluate(eval_cfg(f"ckpt={experts}", "strategy=gated", *common, **kw))
    with pytest.raises(ConfigError, match="^expert: expert 4 is out of range"):
        evaluate(eval_cfg(f"ckpt={experts}", "strategy=single_expert", "expert=4", *common, **kw))
    with pytest.raises(ConfigError, match="^strategy: unknown value 'oracle'"):
        evaluate(eval_cfg(f"ckpt={experts}", "strategy=oracle", *common, **kw))
    with pytest.raises(ConfigError, match="^gate_ckpt: .* is not a gate checkpoint"):
        evaluate(eval_cfg(f"ckpt={experts}", "strategy=gated", f"gate_ckpt={experts}", *common, **kw))


def test_eval_mcl_writes_the_comparison(mcl_ckpts, data_dir, weights_dir, tmp_path):  # noqa: F811
    experts, gate, _ = mcl_ckpts
    cfg = eval_cfg(
        f"ckpt={experts}",
        "strategy=all",
        f"gate_ckpt={gate}",
        "n=16",
        "steps=2",
        "batch_size=16",
        "protocols=[classifier]",
        "kid=false",
        data_dir=data_dir,
        weights_dir=weights_dir,
        out_dir=tmp_path,
    )
    rows = evaluate(cfg)
    labels = [r["label"] for r in rows]
    assert labels == [f"single_expert {k}" for k in range(4)] + [
        "random_expert (batch)",
        "random_expert (sample)",
        "best_expert",
        "mixture_score",
        "committed_usage",
        "gated",
        "sticky_gate",
        "committed_gate",
        "scored",
        "sticky_scores",
        "committed_scores",
    ]
    table = next(tmp_path.glob("strategy_comparison_*.md")).read_text()
    assert all(f"| {label} |" in table for label in labels)
    assert next(tmp_path.glob("strategy_comparison_*.png")).stat().st_size > 10_000
    assert len({r["sample_grid"] for r in rows}) == len(rows)  # one grid per strategy, none overwritten


def test_unreadable_experts_and_gate_checkpoints_are_one_line(mcl_ckpts, make_cfg, data_dir, weights_dir, tmp_path):
    experts, _, _ = mcl_ckpts
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(experts.read_bytes()[:4000])  # a truncated copy
    with pytest.raises(ConfigError) as err:
        train(make_cfg("experiment=mcl_k4_gate", "debug=smoke", f"model.experts_ckpt={bad}", out="g3"))
    assert str(err.value).startswith(f"model.experts_ckpt: cannot read checkpoint {bad}") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=f"^gate_ckpt: cannot read checkpoint {bad}"):
        evaluate(
            eval_cfg(
                f"ckpt={experts}",
                "strategy=gated",
                f"gate_ckpt={bad}",
                "n=16",
                data_dir=data_dir,
                weights_dir=weights_dir,
                out_dir=tmp_path,
            )
        )


def test_checkpoint_options_take_a_run_or_task_dir(mcl_ckpts, smoke_runs, make_cfg, data_dir, weights_dir, tmp_path):
    """model.experts_ckpt, gate_ckpt and baseline_ckpt accept what `ckpt=` accepts: a run dir or a
    task dir (logs/<task>, its newest run) stands for its validation-selected checkpoint."""
    from mixlab.core.checkpoint import resolve_checkpoint
    from mixlab.core.config import build
    from mixlab.mcl.evaluate import compare, load_bank

    experts, gate, gate_summary = mcl_ckpts
    experts_run, gate_run = experts.parent.parent, Path(gate_summary["run_dir"])
    task = tmp_path / "logs" / "mcl_k4_resilient"
    (task / "runs").mkdir(parents=True)
    (task / "runs" / "2026-01-01_00-00-00").symlink_to(experts_run, target_is_directory=True)
    for where in (experts_run, task):
        system = build(make_cfg("experiment=mcl_k4_gate", "debug=smoke", f"model.experts_ckpt={where}", out="g4").model)
        chosen = resolve_checkpoint(experts_run, "experts_ckpt")
        assert system.experts_ckpt == str(chosen)  # the file, recorded in the gate's checkpoints
        ours = system.experts.state_dict()
        for key, value in torch.load(chosen, weights_only=False)["state_dict"].items():
            torch.testing.assert_close(ours[key], value)
        system.run_config = {"model": {"experts_ckpt": str(where)}}
        saved = {}
        system.on_save_checkpoint(saved)  # a gate checkpoint names the file, not the (changing) task dir
        assert saved["mixlab_config"]["model"]["experts_ckpt"] == str(chosen)
    common = ["n=16", "steps=2", "batch_size=16", "protocols=[classifier]", "kid=false"]
    kw = dict(data_dir=data_dir, weights_dir=weights_dir, out_dir=tmp_path / "eval")
    bank, _, _ = load_bank(
        eval_cfg(f"ckpt={experts}", "strategy=gated", f"gate_ckpt={gate_run}", *common, **kw), torch.device("cpu")
    )
    assert bank.gate is not None
    baseline_run = Path(smoke_runs.run("baseline")["run_dir"])
    cfg = eval_cfg(f"ckpt={experts}", "strategy=all", "strategies=[best_expert]", f"baseline_ckpt={baseline_run}", *common, **kw)
    bank, run_cfg, ckpt = load_bank(cfg, torch.device("cpu"))
    rows = compare(cfg, bank, run_cfg, ckpt, torch.device("cpu"))
    assert [r["label"] for r in rows] == ["baseline", "best_expert"]
