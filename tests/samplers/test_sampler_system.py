"""The DiffusionSampler system: config errors before training, the iteration schedule, exact
resume (weights, Adam, buffers, MALA step size, RNG), the evaluator and the draw CLI on smoke
checkpoints, the figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import ROOT, compose_eval, env_for_subprocess

from mixlab.core.config import build
from mixlab.core.errors import ArgumentError, ConfigError, DataNotFoundError
from mixlab.core.evaluate import evaluate, evaluator_for
from mixlab.core.pipeline import check_run_config, train
from mixlab.samplers import figures
from mixlab.samplers.energies import GMM25, Funnel, Manywell
from mixlab.samplers.lgcp import LGCP
from mixlab.samplers.local_search import FixedStepSize, mala
from mixlab.samplers.rollout import RankNoise
from mixlab.samplers.training import is_backward_step, local_search_due, merge_mala

LS = "sampler_gmm25_tb_expl_ls"


def first_error(make_cfg, *overrides: str) -> ConfigError:
    """The ConfigError the run would stop with before training (checks, build, batch split)."""
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        _, world = check_run_config(cfg)
        build(cfg.model).check_batch_split(world, 1)
    return err.value


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.energy._target_=mixlab.samplers.energies.NoSuchEnergy"], "model.energy._target_"),
        (["model.objective._target_=mixlab.samplers.objectives.NoSuchObjective"], "model.objective._target_"),
        (["model.objective._target_=torch.nn.Linear"], "model.objective._target_"),
        (["model/energy=manywell", "model.energy.dim=31"], "model.energy.dim"),
        (["model.T=0"], "model.T"),
        (["model.sigma2=0"], "model.sigma2"),
        (["model.sigma2=-1.5"], "model.sigma2"),
        (["model.exploration.factor=-0.1"], "model.exploration.factor"),
        (["model/objective=pis", "model.local_search.enabled=true"], "model.local_search.enabled"),
        (["model/objective=pis", "model.exploration.factor=0.1"], "model.exploration.factor"),
        (["model/objective=db", "model.flow=null"], "model.flow"),
        (["model/objective=subtb", "model.flow=null"], "model.flow"),
        (["trainer.precision=bf16-mixed"], "trainer.precision"),
        (["trainer=ddp_cpu", "trainer.devices=3"], "model.batch_size"),
        (["model.eval_n=1"], "model.eval_n"),
        (["model.local_search.enabled=true", "model.local_search.burn_in=200"], "model.local_search.burn_in"),
        (["model.buffer.draws=stale"], "model.buffer.draws"),
        (["model.buffer.first_add_twice=sometimes"], "model.buffer.first_add_twice"),
        (["+model.buffer.size=10"], "model.buffer.size"),
        (["model.local_search.enabled=true", "model.local_search.carry_step_size=maybe"], "model.local_search.carry_step_size"),
        (["model.energy._target_=torch.nn.Linear"], "model.energy._target_"),
        (["model.local_search.steps=0"], "model.local_search.steps"),
        (["+model.local_search.chains=3"], "model.local_search.chains"),
        (["model.exploration.decay_steps=0"], "model.exploration.decay_steps"),
        (["model.buffer.rank_k=0"], "model.buffer.rank_k"),
        (["model/objective=pis", "model.both_ways=true"], "model.both_ways"),
        (["model/objective=pis", "model.vectorize=true"], "model.vectorize"),
        (["model/objective=pis", "model.objective.dim=3"], "model.objective.dim"),
        (["model/objective=subtb", "model.objective.lam=0"], "model.objective.lam"),
        (["model.policy.hidden=0"], "model.policy.hidden"),
        (["model/policy=langevin", "model.policy.scale_layers=0"], "model.policy.scale_layers"),
        (["model/objective=fl_subtb", "model.flow.num_layers=-1"], "model.flow.num_layers"),
        (["model.batch_size=0"], "model.batch_size"),
        (["model.learn_variance=yes"], "model.learn_variance"),
    ],
)
def test_bad_configs_name_the_key_before_training(make_cfg, overrides, key):
    err = first_error(make_cfg, "experiment=sampler_gmm25_tb", "debug=smoke", *overrides)
    assert err.key == key and len(str(err).splitlines()) == 1


def test_system_built_in_python_names_its_arguments():
    from functools import partial

    from mixlab.samplers.buffer import ReplayBuffer
    from mixlab.samplers.nets import PISPolicy
    from mixlab.samplers.objectives import PathIntegralSampler, TrajectoryBalance
    from mixlab.samplers.rollout import Exploration
    from mixlab.samplers.system import DiffusionSampler
    from mixlab.samplers.training import LocalSearchSettings

    opt = partial(torch.optim.Adam, lr=1e-3)
    for kwargs, arg in [
        ({"exploration": Exploration(0.1)}, "exploration.factor"),
        ({"both_ways": True}, "both_ways"),
        ({"policy": partial(PISPolicy, hidden=0)}, "policy.hidden"),
        ({"T": 0}, "T"),
        ({"eval_n": 1}, "eval_n"),
        ({"energy": torch.nn.Linear(2, 2)}, "energy"),
    ]:
        with pytest.raises(ArgumentError) as err:
            DiffusionSampler(
                **{
                    "energy": GMM25(),
                    "objective": PathIntegralSampler(),
                    "policy": partial(PISPolicy),
                    "optimizer": opt,
                    **kwargs,
                }
            )
        assert err.value.arg == arg and len(str(err.value).splitlines()) == 1
    sampler = DiffusionSampler(
        GMM25(),
        TrajectoryBalance(),
        partial(PISPolicy, hidden=8),
        opt,
        T=4,
        local_search=LocalSearchSettings(enabled=True),
        buffer=ReplayBuffer(50, draws="reference"),
    )
    assert sampler.policy.dim == 2 and sampler.both_ways and sampler.buffer.capacity == sampler.ls_buffer.capacity == 50
    assert sampler.buffer is not sampler.ls_buffer and sampler.ls_buffer.draws == "reference"


def test_missing_lgcp_data_names_make_data_lgcp_before_any_step(make_cfg, tmp_path):
    cfg = make_cfg("experiment=sampler_lgcp_flsubtb_lp", f"paths.data_dir={tmp_path / 'empty'}")
    check_run_config(cfg)  # the full config composes and passes its checks without the data ...
    with pytest.raises(DataNotFoundError, match="make data-lgcp") as err:
        train(cfg)  # ... and stops in setup, before the first step
    assert len(str(err.value).splitlines()) == 1
    assert not list(Path(cfg.paths.output_dir).glob("checkpoints/*.ckpt"))


@pytest.mark.slow
def test_cli_missing_lgcp_data_is_one_line(tmp_path):
    cmd = [
        sys.executable,
        "train.py",
        "experiment=sampler_lgcp_tb_expl_lp_ls",
        "logger=csv",
        f"paths.data_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: LGCP data") and "make data-lgcp" in proc.stderr


def test_schedule_alternates_and_runs_local_search_like_the_reference():
    assert [is_backward_step(s, True) for s in range(4)] == [False, True, False, True]
    assert not any(is_backward_step(s, False) for s in range(4))
    due = [s for s in range(1, 400, 2) if local_search_due(s, 100)]
    assert due == [1, 101, 201, 301]  # the reference: it % 100 == 1
    assert [s for s in range(1, 20, 2) if local_search_due(s, 1)] == list(range(1, 20, 2))
    assert [s for s in range(1, 14, 2) if local_search_due(s, 4)] == [1, 5, 9, 13]


class RanksInOneProcess:
    """Stands in for the collectives of `world` ranks whose results are all at hand."""

    def __init__(self, world, rank, results):
        self.world, self.rank, self.results = world, rank, results

    def gather_ragged(self, tensors):
        fields = ["samples", "log_r", "step_of", "row_of"]
        out = []
        for i, _ in enumerate(tensors):
            parts = []
            for r, res in enumerate(self.results):
                value = getattr(res, fields[i])
                parts.append(value * self.world + r if fields[i] == "row_of" else value)
            out.append(torch.cat(parts))
        return out


def test_merged_mala_output_of_sliced_chains_equals_one_process():
    energy, n, world = Manywell(4), 12, 3
    x = energy.sample(n, torch.Generator().manual_seed(0))

    def run(rank, w):
        return mala(
            energy,
            x[rank::w],
            steps=12,
            burn_in=4,
            step_size=0.05,
            rule=FixedStepSize(),
            noise=RankNoise(torch.Generator().manual_seed(1), n, rank, w),
        )

    one = run(0, 1)
    results = [run(r, world) for r in range(world)]
    merged_x, merged_log_r = merge_mala(results[0], n, RanksInOneProcess(world, 0, results))
    assert len(one.samples) > 10
    torch.testing.assert_close(merged_x, one.samples)
    torch.testing.assert_close(merged_log_r, one.log_r)


def _ckpt(run_dir) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=False)


@pytest.mark.parametrize("reference", [False, True], ids=["paper", "reference-buffer-order"])
def test_resume_equals_an_uninterrupted_run(make_cfg, reference):
    """2 epochs (8 iterations, local search at iterations 1 and 5) straight vs 1 epoch + resume;
    also with the reference code's buffer (draw order and doubled first add; its pending draw is
    part of the state)."""
    args = [f"experiment={LS}", "debug=smoke"] + (
        ["model.buffer.draws=reference", "model.buffer.first_add_twice=true"] if reference else []
    )
    straight = make_cfg(*args, out="straight")
    train(straight)
    first = make_cfg(*args, "trainer.max_epochs=1", out="resumed")
    train(first)
    assert _ckpt(first.paths.output_dir)["global_step"] == 4
    train(make_cfg(*args, out="resumed"))  # the same run dir: auto-resumes from its last.ckpt
    a, b = _ckpt(straight.paths.output_dir), _ckpt(first.paths.output_dir)
    assert a["global_step"] == b["global_step"] == 8
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    sa, sb = a["sampler_state"], b["sampler_state"]
    assert sa["ls_step_size"] == sb["ls_step_size"] != 0.01 and sa["ls_stats"]["calls"] == sb["ls_stats"]["calls"] == 2
    for name in ("buffer", "ls_buffer"):
        assert len(sa[name]["x"]) == len(sb[name]["x"]) > 0
        torch.testing.assert_close(sa[name]["x"], sb[name]["x"], rtol=0, atol=0)
        torch.testing.assert_close(sa[name]["log_r"], sb[name]["log_r"], rtol=0, atol=0)
    assert len(sa["buffer"]["x"]) == (5 if reference else 4) * 16  # forward iterations 0 (twice), 2, 4, 6 x 16
    assert torch.equal(a["mixlab_rng"]["noise"], b["mixlab_rng"]["noise"])
    for name in ("buffer", "ls_buffer"):
        assert sa[name]["draws"] == ("reference" if reference else "independent")
        assert sa[name]["cursor"] == sb[name]["cursor"] and (sa[name]["queue"] is None) == (not reference)
        if reference:
            assert torch.equal(sa[name]["queue"], sb[name]["queue"])


@pytest.mark.parametrize("carry", [True, False])
def test_local_search_step_size_carried_over_or_restarted(make_cfg, monkeypatch, carry):
    """carry_step_size=false (the reference code): every MALA call starts from local_search.step_size."""
    import mixlab.samplers.system as system

    starts = []

    def recording_mala(energy, x, steps, burn_in, step_size, *args, **kwargs):
        starts.append(step_size)
        return mala(energy, x, steps, burn_in, step_size, *args, **kwargs)

    monkeypatch.setattr(system, "mala", recording_mala)
    cfg = make_cfg(
        f"experiment={LS}",
        "debug=smoke",
        "model.local_search.step_size=0.1",
        f"model.local_search.carry_step_size={str(carry).lower()}",
    )
    train(cfg)
    final = _ckpt(cfg.paths.output_dir)["sampler_state"]["ls_step_size"]
    assert len(starts) == 2 and starts[0] == 0.1 and final != 0.1
    assert starts[1] != 0.1 if carry else starts[1] == 0.1


def test_evaluator_writes_json_and_figure_on_smoke_checkpoints(smoke_runs, data_dir, tmp_path):
    for experiment, fields in [
        (LS, ["w2", "modes_hit", "log_z_learned", "eubo", "ls_acceptance"]),
        ("sampler_manywell_tb", ["w2", "shallow_share"]),
        ("sampler_lgcp_flsubtb_lp", []),
    ]:
        ckpt = smoke_runs.run(experiment)["last_ckpt"]
        assert evaluator_for(ckpt)[1] == "sampler"
        out = tmp_path / experiment
        cfg = compose_eval("evaluator=sampler", f"ckpt={ckpt}", "n=48", "reference_seeds=2", data_dir=data_dir, out_dir=out)
        result = evaluate(cfg)
        saved = json.loads((out / "sampler_n48_seed0.json").read_text())
        assert (out / "sampler_n48_seed0.png").stat().st_size > 10_000
        assert saved["n"] == 48 and saved["global_step"] == 8 and saved["experiment"] == experiment
        assert all(saved[f] is not None for f in ["log_z_hat", "log_z_rw", *fields]), experiment
        if saved["log_z"] is None:  # LGCP: raw estimates, no W2, EUBO or reference rows
            assert "w2" not in saved and "delta_log_z" not in saved and "eubo" not in saved and saved["reference_w2"] == []
        else:
            assert saved["delta_log_z"] == pytest.approx(saved["log_z"] - saved["log_z_hat"])
            assert saved["abs_delta_log_z"] == pytest.approx(abs(saved["delta_log_z"]))
            assert [r["name"] for r in saved["reference_w2"]][0] == "exact vs exact"
            assert len(saved["reference_w2"]) == 2 and all(r["seeds"] == 2 for r in saved["reference_w2"])
        assert result["metrics_json"].endswith("sampler_n48_seed0.json")
    with pytest.raises(ConfigError, match="^n: "):
        evaluate(compose_eval("evaluator=sampler", f"ckpt={ckpt}", "n=1", data_dir=data_dir, out_dir=tmp_path / "bad"))


def test_draw_writes_samples_with_log_weights(smoke_runs, tmp_path):
    from tools.samplers.draw import main

    ckpt = smoke_runs.run("sampler_manywell_tb")["last_ckpt"]
    out = tmp_path / "draw.pt"
    assert main([f"ckpt={ckpt}", "n=20", "seed=3", f"out={out}"]) == 0
    data = torch.load(out, weights_only=False)
    assert data["x"].shape == (20, 32) and data["log_w"].shape == (20,) and torch.isfinite(data["log_w"]).all()
    assert data["log_z_hat"] == pytest.approx(float(data["log_w"].mean()))
    assert main([f"ckpt={ckpt}", "n=0"]) == 2 and main([f"ckpt={ckpt}", "m=3"]) == 2


@pytest.mark.parametrize(
    "energy",
    [GMM25(), Manywell(8), Funnel(10), LGCP(root=None, grid=6, points=[[0.1, 0.2], [0.5, 0.5], [0.9, 0.3]])],
    ids=["gmm25", "manywell", "funnel", "lgcp"],
)
def test_figures_of_every_energy(energy, tmp_path):
    g = torch.Generator().manual_seed(0)
    x = energy.sample(300, g)
    x = torch.randn(300, energy.dim, generator=g) if x is None else x
    path = figures.draw(energy, x, energy.sample(300, g), tmp_path / "f.png", "title")
    assert path.stat().st_size > 10_000


def test_a_flow_factory_without_a_policy_argument_is_still_completed():
    """The system passes the policy only to flows that take it (a user's own flow need not)."""
    from mixlab.samplers.system import _complete

    def own_flow(dim):
        return torch.nn.Linear(dim, 1)

    def shared_flow(dim, policy=None):
        return torch.nn.Linear(dim, 1 if policy is None else 2)

    assert _complete(own_flow, 3, "flow", policy=object()).out_features == 1
    assert _complete(shared_flow, 3, "flow", policy=object()).out_features == 2
