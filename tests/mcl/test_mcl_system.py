"""The MCL system end to end: routings, errors, annealing + usage callbacks, DDP statistics."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from omegaconf import OmegaConf
from support import ROOT

from mixlab.callbacks.annealing import TemperatureAnnealing, annealed_value
from mixlab.core.config import build
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.pipeline import train
from mixlab.mcl.evaluate import routing_of
from mixlab.mcl.routing import Committed, Gated, RandomExpert, SingleExpert, Sticky
from mixlab.nets.gating import GatingNet
from mixlab.score.schedule import KarrasGrid
from mixlab.score.solvers import Heun

SMOKE = ["experiment=mcl_k4", "debug=smoke"]
ROUTINGS = OmegaConf.load(ROOT / "conf" / "evaluator" / "routings" / "mcl.yaml")  # strategy=NAME -> routings.NAME


def build_routing(strategy: str, seed: int = 0, **options):
    """The routing `strategy=NAME` (with evaluator options such as expert=, per=) builds."""
    return routing_of(OmegaConf.merge(ROUTINGS, options), strategy, seed=seed)


@pytest.fixture
def mcl_system(make_cfg):
    torch.manual_seed(0)
    system = build(make_cfg(*SMOKE).model).eval()
    system.gate = GatingNet(system.num_experts).eval()
    return system


@pytest.mark.parametrize("strategy", [s for s in ROUTINGS.routings if not s.endswith("scores") and s != "scored"])
def test_every_routing_samples_deterministically(mcl_system, strategy):
    def draw():
        gen = torch.Generator().manual_seed(3)
        return mcl_system.sample(
            6,
            solver=Heun(),
            steps=3,
            grid=KarrasGrid(),
            generator=gen,
            batch_size=4,
            routing=build_routing(strategy, expert=1, seed=7, per="sample"),
        )

    a, b = draw(), draw()
    assert a.shape == (6, 1, 28, 28) and torch.isfinite(a).all() and a.abs().max() <= 1
    torch.testing.assert_close(a, b)


def test_routings_choose_what_they_say(mcl_system):
    x, sigma = torch.randn(5, 1, 28, 28) * 10, torch.full((5,), 10.0)
    eps_all = mcl_system.eps_all(x, sigma)
    torch.testing.assert_close(SingleExpert(2).start(mcl_system, 5)(x, sigma), eps_all[2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        build_routing("mixture_score").start(mcl_system, 5)(x, sigma), eps_all.mean(0), atol=1e-5, rtol=1e-4
    )
    best = build_routing("best_expert").start(mcl_system, 5)(x, sigma)
    norms = eps_all.flatten(2).norm(dim=2)  # [K, B]
    for n in range(5):
        torch.testing.assert_close(best[n], eps_all[norms[:, n].argmin(), n], atol=1e-5, rtol=1e-4)
    gated = Gated("gate").start(mcl_system, 5)(x, sigma)
    pick = mcl_system.gate_logits(x, sigma).argmax(1)
    torch.testing.assert_close(gated, eps_all[pick, torch.arange(5)], atol=1e-5, rtol=1e-4)
    mcl_system.usage_shares = torch.tensor([0.0, 1.0, 0.0, 0.0])  # only expert 1 ever won
    committed = Committed("usage").start(mcl_system, 5)
    torch.testing.assert_close(committed(x, sigma), eps_all[1], atol=1e-5, rtol=1e-4)
    assert committed.choice.tolist() == [1] * 5 and committed(x * 0.5, sigma / 2).shape == x.shape
    sticky = Sticky("gate", margin=2.0).start(mcl_system, 5)  # a margin no probability gap reaches: never switches
    first = sticky(x, sigma).clone()
    torch.testing.assert_close(first, gated, atol=1e-5, rtol=1e-4)  # the first call is the gate's choice
    sticky(x.flip(0), sigma)
    assert sticky.switches == 0 and torch.equal(sticky.current, pick)
    loose = Sticky("gate", margin=-1.0).start(mcl_system, 5)  # any gap switches: plain gated routing
    loose(x, sigma)
    torch.testing.assert_close(
        loose(x.flip(0), sigma), Gated("gate").start(mcl_system, 5)(x.flip(0), sigma), atol=1e-5, rtol=1e-4
    )
    per_batch = build_routing("random_expert", per="batch", seed=0).start(mcl_system, 5)
    out = per_batch(x, sigma)
    assert any(torch.allclose(out, eps_all[k], atol=1e-5, rtol=1e-4) for k in range(4))  # one expert for all


def test_routing_errors_name_the_key(mcl_system):
    x, sigma = torch.randn(2, 1, 28, 28), torch.ones(2)
    with pytest.raises(ArgumentError, match="^expert: expert 7 is out of range"):
        SingleExpert(7).start(mcl_system, 2)
    with pytest.raises(ConfigError, match="^strategy: unknown value 'nope' \\(choose single_expert\\|"):
        build_routing("nope")
    with pytest.raises(ConfigError, match="^per: must be 'batch' or 'sample', got 'diagonal'"):
        build_routing("random_expert", per="diagonal")
    with pytest.raises(ArgumentError, match="^source: "):
        Committed("oracle")
    with pytest.raises(ArgumentError, match="^per: "):
        RandomExpert("diagonal")
    with pytest.raises(ConfigError, match="^strategy: scored routing needs resilient"):
        build_routing("scored").start(mcl_system, 2)(x, sigma)
    mcl_system.gate = None
    with pytest.raises(ConfigError, match="^gate_ckpt:"):
        build_routing("gated").start(mcl_system, 2)(x, sigma)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.num_experts=0", "model.num_experts"),
        ("callbacks.temperature=null", "callbacks.temperature"),
        ("model.normalization=sum", "model.normalization"),
    ],
)
def test_bad_mcl_configs_fail_before_training(make_cfg, override, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        train(make_cfg(*SMOKE, override))


def test_unknown_variant_is_a_compose_error(make_cfg):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="model/assignment"):
        make_cfg(*SMOKE, "model/assignment=nope")


def test_k1_is_plain_score_matching(make_cfg):
    summary = train(make_cfg(*SMOKE, "model.num_experts=1", "trainer.max_epochs=1"))
    assert summary["metrics"]["usage/expert_0"] == 1.0 and summary["metrics"]["usage/dead"] == 0.0


# ----- the shared callbacks --------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "exponential", "cosine"])
def test_annealed_value_endpoints_and_shape(schedule):
    assert annealed_value(10, 0.01, 0, schedule) == pytest.approx(10)
    assert annealed_value(10, 0.01, 1, schedule) == pytest.approx(0.01)
    assert annealed_value(10, 0.01, 2, schedule) == pytest.approx(0.01)  # clipped past the end
    mid = {"linear": 5.005, "exponential": (10 * 0.01) ** 0.5, "cosine": 5.005}[schedule]
    assert annealed_value(10, 0.01, 0.5, schedule) == pytest.approx(mid)
    values = [annealed_value(10, 0.01, p / 10, schedule) for p in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))  # monotone
    if schedule == "cosine":  # flat at both ends
        assert values[0] - values[1] < values[4] - values[5] and values[9] - values[10] < values[5] - values[6]


class _Recorder(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, trainer.global_step, float(pl_module.temperature)))


def _fit(tmp_path, max_epochs, interval, ckpt=None):
    recorder = _Recorder()
    callbacks = [TemperatureAnnealing(10.0, 0.01, "exponential", interval, total=4 if interval == "epoch" else None), recorder]
    trainer = L.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = BoringModel()
    model.temperature = torch.zeros(())  # a tensor attribute is filled in place
    trainer.fit(model, ckpt_path=ckpt)
    path = tmp_path / f"ep{max_epochs}.ckpt"
    trainer.save_checkpoint(path)
    return recorder.seen, path, model


def test_epoch_annealing_matches_the_reference_schedule_and_survives_resume(tmp_path):
    straight, _, model = _fit(tmp_path / "a", 4, "epoch")
    per_epoch = sorted({(e, t) for e, _, t in straight})
    expected = [10 * (0.01 / 10) ** ((e - 1) / 3) for e in range(1, 5)]  # tau_max (tau_min/tau_max)^((e-1)/(E-1))
    assert [t for _, t in per_epoch] == pytest.approx(expected)
    assert float(model.temperature) == pytest.approx(0.01)
    first, ckpt, _ = _fit(tmp_path / "b", 2, "epoch")
    resumed, _, _ = _fit(tmp_path / "b", 4, "epoch", ckpt=str(ckpt))
    assert first + resumed == straight
    assert torch.load(ckpt, weights_only=False)["callbacks"]["TemperatureAnnealing"]["value"] == pytest.approx(1.0)


def test_step_annealing_changes_every_step(tmp_path):
    seen, _, _ = _fit(tmp_path, 2, "step")
    temps = [t for _, _, t in seen]
    assert len(set(temps)) == 6 and temps[0] == pytest.approx(10) and temps[-1] == pytest.approx(0.01)


def test_usage_plot_and_history_are_written(make_cfg):
    summary = train(make_cfg(*SMOKE))
    run = Path(summary["run_dir"])
    assert (run / "figures" / "expert_usage_training.png").is_file()
    assert sorted(p.name for p in (run / "samples").glob("epoch_0001*.png")) == ["epoch_0001.png"] + [
        f"epoch_0001_expert_{k}.png" for k in range(4)
    ]
    ckpt = torch.load(summary["last_ckpt"], weights_only=False)
    history = ckpt["callbacks"]["ExpertUsage"]["history"]
    assert len(history) == 2 and all(sum(row) == pytest.approx(1.0) for row in history)
    assert [summary["metrics"][f"usage/expert_{k}"] for k in range(4)] == pytest.approx(history[-1])


@pytest.mark.slow
def test_ddp_usage_is_reduced_over_ranks_and_training_matches_one_process(make_cfg):
    exact = [*SMOKE, "model.net.dropout=0.0", "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=0.05"]
    ckpts = []
    for out, extra in (("one", []), ("two", ["trainer=ddp_cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"])):
        cfg = make_cfg(*exact, *extra, out=out)
        train(cfg)
        ckpts.append(torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False))
    h1, h2 = (c["callbacks"]["ExpertUsage"]["history"] for c in ckpts)
    assert len(h1) == 2 and torch.allclose(
        torch.tensor(h1), torch.tensor(h2), atol=1e-6
    )  # each rank saw half the batch: the all-reduce gives the global shares
    w1, w2 = (c["current_model_state"] for c in ckpts)
    for key in w1:  # per-expert normalisation by the global weight totals: 2 x B/2 == 1 x B
        torch.testing.assert_close(w1[key], w2[key], atol=1e-5, rtol=1e-4)


def test_every_strategy_name_builds_the_routing_of_that_name():
    for name in ROUTINGS.routings:
        assert build_routing(name, seed=3).name == name  # result rows and file tags use the routing's own name
    assert build_routing("single_expert", expert=2).tag == "single_expert2"
    assert build_routing("random_expert", per="sample").tag == "random_expert_per_sample"
