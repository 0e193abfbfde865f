"""SEDD and the AR baseline through the pipeline and the evaluators, on the tiny text corpora of
tests/sedd/smoke_data.py: DDP and accumulation equal one process, mid-epoch resume equals an
uninterrupted run, the ELBO evaluator on a closed form, sampling with infill, the errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from support import ROOT, compose_eval, env_for_subprocess

from mixlab.core.config import build
from mixlab.core.errors import ArgumentError, ConfigError, DataNotFoundError
from mixlab.core.pipeline import train
from mixlab.sedd.evaluate import evaluate, evaluate_ar
from mixlab.sedd.generate import perplexity_report
from mixlab.sedd.generate import run as sample_text

CHAR = ["experiment=sedd_absorb_char", "debug=smoke"]
# SGD, no dropout (the smoke net has none): N processes reach 1 process at float precision
EXACT = [
    *CHAR,
    "model.optimizer._target_=torch.optim.SGD",
    "~model.optimizer.betas",
    "~model.optimizer.eps",
    "~model.optimizer.weight_decay",
    "model.optimizer.lr=0.05",
    "trainer.max_epochs=1",
]


class Killed(Exception):
    """What KillAtStep raises (Lightning turns a KeyboardInterrupt into SystemExit)."""


class KillAtStep(L.Callback):
    """Raises when optimizer step `step` is about to start: a run killed mid-epoch."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed(f"killed before step {self.step}")


def _state(summary_or_path) -> dict:
    path = summary_or_path["last_ckpt"] if isinstance(summary_or_path, dict) else summary_or_path
    return torch.load(path, weights_only=False)


def _assert_same_weights(a: dict, b: dict, key: str = "current_model_state", **tol) -> None:
    for name in a[key]:
        torch.testing.assert_close(a[key][name], b[key][name], **(tol or dict(atol=1e-5, rtol=1e-4)))


def test_accumulation_reproduces_one_step(make_cfg):
    """2 x B/2 accumulated == 1 x B: same blocks, same t and transitions (drawn per optimizer step)."""
    one = train(make_cfg(*EXACT, "trainer.limit_train_batches=4", out="one"))
    two = train(make_cfg(*EXACT, "trainer.limit_train_batches=8", "trainer.accumulate_grad_batches=2", out="two"))
    assert one["global_step"] == two["global_step"] == 4
    _assert_same_weights(_state(one), _state(two))


@pytest.mark.slow
def test_two_processes_reproduce_one(make_cfg):
    one = train(make_cfg(*EXACT, "trainer.limit_train_batches=4", out="one"))
    two = train(
        make_cfg(
            *EXACT,
            "trainer.limit_train_batches=4",
            "trainer=ddp_cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp_spawn",
            out="two",
        )
    )
    assert math.isfinite(two["metrics"]["val/nats_per_token"])
    _assert_same_weights(_state(one), _state(two))
    assert len(list(Path(two["run_dir"], "samples").glob("step_*.txt"))) == 1  # rank 0 only


def test_a_run_killed_mid_epoch_resumes_exactly(make_cfg):
    """Weights, EMA, AdamW moments and the data position continue as if never stopped."""
    common = [*CHAR, "trainer.max_epochs=1", "trainer.limit_train_batches=8", "callbacks.step_checkpoint.every_n_train_steps=3"]
    straight = train(make_cfg(*common, out="straight"))
    killed = make_cfg(*common, "+callbacks.kill._target_=test_sedd_system.KillAtStep", "+callbacks.kill.step=5", out="run")
    with pytest.raises(Killed):
        train(killed)
    mid = _state(Path(killed.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert mid["global_step"] == 4 and mid["epoch"] == 0  # mid-epoch (steps 3 and 4: step checkpoint, validation)
    resumed = train(make_cfg(*common, out="run"))  # the same run dir: auto-resume
    a, b = _state(straight), _state(resumed)
    assert a["global_step"] == b["global_step"] == 8
    _assert_same_weights(a, b)
    _assert_same_weights(a, b, key="state_dict")  # the EMA weights
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_training_writes_text_samples_and_logs_the_bound(smoke_runs):
    summary = smoke_runs.run("sedd_absorb_char")
    texts = sorted(Path(summary["run_dir"], "samples").glob("step_*.txt"))
    assert [p.name for p in texts] == ["step_0000004.txt", "step_0000008.txt"]
    assert texts[0].read_text().count("=" * 80) == 1  # two samples, one separator
    nats = summary["metrics"]["val/nats_per_token"]
    assert math.isfinite(nats) and summary["metrics"]["val/ppl_bound"] == pytest.approx(math.exp(nats), rel=1e-5)


def test_the_elbo_evaluator_on_the_closed_form_of_an_untrained_model(make_cfg, data_dir, tmp_path):
    """At init the head is zero, so with scale_by_sigma the score is the exact score of uniform data:
    the diffusion term is (1 - eps) log n per token in expectation, whatever the text (n = the ids)."""
    summary = train(make_cfg(*EXACT, "model.optimizer.lr=1e-12", "trainer.limit_train_batches=4", out="init"))
    cfg = compose_eval(
        f"ckpt={summary['last_ckpt']}",
        "evaluator=sedd",
        "timesteps=64",
        "t_batch=16",
        "limit=6",
        "batch_size=2",
        data_dir=data_dir,
        out_dir=tmp_path,
    )
    result = evaluate(cfg)
    n = torch.load(summary["last_ckpt"], weights_only=False)["mixlab_config"]["model"]["vocab_size"]
    gap = result["diffusion_nats_per_token"] - (1 - 1e-3) * math.log(n)
    assert abs(gap) < 4 * result["nats_per_token_se"] and 0 < result["nats_per_token_se"] < 0.2, (
        gap,
        result["nats_per_token_se"],
    )
    assert result["tokens"] == 6 * 64 and result["sequences"] == 6
    total = result["diffusion_nats_per_token"] + result["truncation_nats_per_token"] + result["prior_nats_per_token"]
    assert result["nats_per_token"] == pytest.approx(total) and result["ppl_bound"] == pytest.approx(math.exp(total))
    assert 0 < result["prior_nats_per_token"] < 0.01 and result["truncation_nats_per_token"] > 0
    written = json.loads(next(tmp_path.glob("elbo_test_T64_seed0.json")).read_text())
    assert written["nats_per_token"] == pytest.approx(result["nats_per_token"])


def test_sampling_keeps_prefix_suffix_and_is_judged_by_the_ar_baseline(smoke_runs, data_dir, tmp_path):
    """The judge is given as its run dir (judge_ckpt accepts what ckpt= accepts)."""
    sedd, ar = smoke_runs.run("sedd_absorb_char"), smoke_runs.run("ar_char")
    cfg = compose_eval(
        f"ckpt={sedd['last_ckpt']}",
        "evaluator=sedd_sample",
        "n=3",
        "steps=4",
        "prefix=the quick",
        "suffix=lazy dog.",
        f"judge_ckpt={ar['run_dir']}",
        data_dir=data_dir,
        out_dir=tmp_path,
    )
    result = sample_text(cfg)
    texts = Path(result["samples"]).read_text().strip().split("\n" + "=" * 80 + "\n")
    assert len(texts) == 3 and all(t.startswith("the quick") and t.endswith("lazy dog.") for t in texts)
    assert math.isfinite(result["gen_ppl"]) and result["gen_ppl"] >= result["gen_ppl_of_mean_nll"]  # Jensen
    assert 0 < result["unigram_entropy"] <= math.log(64) and 1 <= result["nfe"] <= 5


def test_the_sampler_option_picks_a_predictor_class(make_cfg, data_dir, tmp_path):
    """`sampler=NAME` on `make sample-text` is the config group conf/sampler/NAME.yaml (a `_target_`);
    an unknown name is one line naming `sampler`. The training-time predictor is the same group
    (`model.sampler.predictor=NAME` or `sampler@model.sampler.predictor=NAME`)."""
    from mixlab.core.cli import check_overrides
    from mixlab.sedd.sampling import AnalyticPredictor, EulerPredictor

    for option, cls, name in (([], AnalyticPredictor, "analytic"), (["sampler=euler"], EulerPredictor, "euler")):
        predictor = build(compose_eval("ckpt=x", "evaluator=sedd_sample", *option, data_dir=data_dir).sampler)
        assert type(predictor) is cls and predictor.name == name
    for override in ("model.sampler.predictor=analytic", "sampler@model.sampler.predictor=analytic"):
        assert type(build(make_cfg(*CHAR, override).model).sampler_defaults["predictor"]) is AnalyticPredictor
    assert type(build(make_cfg(*CHAR).model).sampler_defaults["predictor"]) is EulerPredictor
    with pytest.raises(ConfigError) as err:
        check_overrides("eval", ["ckpt=x", "evaluator=sedd_sample", "sampler=leap"])
    assert str(err.value).startswith("sampler:") and "analytic" in str(err.value) and "\n" not in str(err.value)


def test_the_radd_cache_skips_unchanged_sequences(smoke_runs, data_dir, tmp_path):
    radd = smoke_runs.run("sedd_radd_char")
    common = [f"ckpt={radd['last_ckpt']}", "evaluator=sedd_sample", "n=2", "steps=64", "sampler=analytic"]
    plain = sample_text(compose_eval(*common, data_dir=data_dir, out_dir=tmp_path / "a"))
    cached = sample_text(compose_eval(*common, "cache=true", data_dir=data_dir, out_dir=tmp_path / "b"))
    assert Path(plain["samples"]).read_text() == Path(cached["samples"]).read_text()  # same samples
    assert cached["nfe"] < plain["nfe"] == 65  # 64 steps + the denoiser; the cache skips unchanged states


def test_the_ar_evaluator_reports_its_exact_perplexity(smoke_runs, data_dir, tmp_path):
    ar = smoke_runs.run("ar_char")
    result = evaluate_ar(compose_eval(f"ckpt={ar['last_ckpt']}", "evaluator=ar", "limit=4", data_dir=data_dir, out_dir=tmp_path))
    assert result["ppl"] == pytest.approx(math.exp(result["nats_per_token"]), rel=1e-5) and result["nats_per_token"] > 0


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model/graph=uniform"], "model.param.scale_by_sigma"),
        (["model/graph=uniform", "model/param=radd"], "model.param"),
        (["data.length=128", "model.length=64"], "data.length"),
        (["data.tokenizer=bpe"], "data.tokenizer"),
        (["data.corpus=nope"], "data.corpus"),
        (["trainer.accumulate_grad_batches=3"], "data.batch_size"),
        (["model.sampler.steps=0"], "model.sampler.steps"),
        (["model.sampler.predictor=leap"], "model.sampler.predictor"),
        (["model.sampling_eps=1.0"], "model.sampling_eps"),
        (["model/noise=geometric", "model.noise.sigma_max=1e-5"], "model.noise.sigma_max"),
        (["model.graph.num_tokens=7"], "model.vocab_size"),
        (["model.graph.num_tokens=1"], "model.graph.num_tokens"),
        (["model.scheduler.warmup_steps=-1"], "model.scheduler.warmup_steps"),
    ],
)
def test_bad_text_configs_fail_before_training(make_cfg, overrides, key):
    cfg = make_cfg(*CHAR, *overrides)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(f"{key}:")
    assert not Path(cfg.paths.output_dir, "checkpoints").exists()


def test_a_missing_corpus_names_make_data_text(make_cfg, tmp_path):
    cfg = make_cfg(*CHAR)
    cfg.paths.data_dir = cfg.data.root = str(tmp_path / "empty")
    with pytest.raises(DataNotFoundError, match="make data-text"):
        train(cfg)


def test_sampling_options_are_checked(make_cfg):
    system = build(make_cfg(*CHAR).model)
    n, length = system.graph.num_tokens, system.length
    cases = [
        (dict(cache=True), "cache"),
        (dict(prefix=[1] * (length + 1)), "prefix"),
        (dict(prefix=[1, 2], infill=[(1, 3)]), "infill"),
        (dict(infill=[(0, n)]), "infill"),  # MASK is not a real token
        (dict(suffix=[n + 5]), "suffix"),
        (dict(steps=0), "steps"),
        (dict(length=length + 1), "length"),
    ]
    for options, key in cases:  # sample_tokens' own arguments: ArgumentError naming the argument
        with pytest.raises(ArgumentError) as err:
            system.sample_tokens(1, **{"steps": 2, **options})
        assert str(err.value).startswith(f"{key}:") and "\n" not in str(err.value), (options, str(err.value))


@pytest.mark.parametrize(
    "evaluator,option,key",
    [("sedd", "timesteps=0", "timesteps"), ("sedd_sample", "steps=0", "steps"), ("sedd", "split=train", "split")],
)
def test_bad_evaluator_options_name_the_key(smoke_runs, data_dir, tmp_path, evaluator, option, key):
    ckpt = smoke_runs.run("sedd_absorb_char")["last_ckpt"]
    run = evaluate if evaluator == "sedd" else sample_text
    with pytest.raises(ConfigError) as err:
        run(compose_eval(f"ckpt={ckpt}", f"evaluator={evaluator}", option, data_dir=data_dir, out_dir=tmp_path))
    assert str(err.value).startswith(f"{key}:")


def test_text_options_on_a_non_sedd_checkpoint_are_one_line(smoke_runs, tmp_path):
    ckpt = smoke_runs.run("baseline")["last_ckpt"]
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"ckpt={ckpt}", "prefix=Once upon", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: prefix: not an option of evaluator 'fid'")


def test_perplexity_report_gives_means_and_standard_errors_over_samples():
    nll = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    report = perplexity_report(nll, "_x")
    ppl = [math.exp(1), math.exp(2), math.exp(3)]
    assert report["gen_nll_x"] == pytest.approx(2.0) and report["gen_nll_se_x"] == pytest.approx(1 / math.sqrt(3))
    assert report["gen_ppl_x"] == pytest.approx(sum(ppl) / 3) and report["gen_ppl_of_mean_nll_x"] == pytest.approx(math.exp(2))
    assert report["gen_ppl_se_x"] == pytest.approx(torch.tensor(ppl).std().item() / math.sqrt(3))
    assert math.isnan(perplexity_report(nll[:1])["gen_ppl_se"])
