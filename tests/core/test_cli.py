"""The entry points as a user runs them: `evaluate.py` picks the evaluator from the checkpoint's
system class, and every user error is one line on stderr (exit code 2), no traceback."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import ROOT, env_for_subprocess


def run(script: str, *args: str, run_dir: Path | None = None) -> subprocess.CompletedProcess:
    """`python <script> args` in the project root; Hydra's run dir under a tmp dir (never logs/)."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="cli-"))
    return subprocess.run(
        [sys.executable, script, *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def baseline_ckpt(smoke_runs) -> Path:
    return Path(smoke_runs.run("baseline")["last_ckpt"])


def test_evaluate_needs_a_checkpoint():
    assert one_line_error(run("evaluate.py", "n=5")).startswith("error: ckpt: give the checkpoint to evaluate")


def test_an_option_of_another_evaluator_names_the_key(baseline_ckpt):
    line = one_line_error(run("evaluate.py", f"ckpt={baseline_ckpt}", "strategy=gated"))
    assert line.startswith("error: strategy: not an option of evaluator 'fid'") and "ScoreDiffusion checkpoint" in line


def test_an_unknown_evaluator_lists_the_available_ones(baseline_ckpt):
    line = one_line_error(run("evaluate.py", f"ckpt={baseline_ckpt}", "evaluator=nope"))
    assert line.startswith("error: evaluator: unknown evaluator 'nope' (choose ") and "fid" in line


@pytest.mark.parametrize("content", [b"", b"\x00garbage"])
def test_an_unreadable_checkpoint_is_one_line(tmp_path, content):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    line = one_line_error(run("evaluate.py", f"ckpt={bad}"))
    assert line.startswith(f"error: ckpt: cannot read checkpoint {bad}")


def test_a_run_dir_or_task_dir_stands_for_its_checkpoint(baseline_ckpt):
    from mixlab.core.checkpoint import resolve_checkpoint

    run_dir = baseline_ckpt.parent.parent
    assert resolve_checkpoint(run_dir, "ckpt") in (baseline_ckpt, Path(run_dir / "checkpoints").glob("best_*.ckpt").__next__())
    assert resolve_checkpoint(baseline_ckpt, "ckpt") == baseline_ckpt


@pytest.mark.parametrize(
    "args,key",
    [
        (["experiment=nope"], "experiment"),
        (["model.no_such_key=1"], "model.no_such_key"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs"),
        (["model.optimizer.lr=-1"], "model.optimizer.lr"),
    ],
)
def test_train_reports_a_bad_override_in_one_line(data_dir, tmp_path, args, key):
    line = one_line_error(
        run("train.py", "experiment=baseline", "debug=smoke", f"paths.data_dir={data_dir}", *args, run_dir=tmp_path / "run")
    )
    assert line.startswith(f"error: {key}:")


def test_a_normal_run_prints_no_tips_or_deprecation_noise(data_dir, tmp_path):
    proc = run("train.py", "experiment=baseline", "debug=smoke", f"paths.data_dir={data_dir}", run_dir=tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    for noise in ("Tip:", "deprecated", "Deprecat", "litlogger", "LeafSpec"):
        assert noise not in out, out
    assert "GPU available" not in out and "TPU available" not in out  # no accelerator banner
    assert out.count("`Trainer.fit` stopped") == 1  # Lightning's info lines once, not twice (Hydra's handler too)
    assert "[mixlab] checkpoint:" in out


def test_evaluate_leaves_no_run_folder_under_logs():
    """Evaluators write next to the checkpoint (out_dir); Hydra writes no run dir, config copy or log file."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval.yaml", overrides=["ckpt=x"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None
    assert "file" not in cfg.hydra.job_logging.handlers  # no evaluate.log


@pytest.mark.parametrize(
    "args,start",
    [
        (["solver=rk4"], "error: solver: unknown value 'rk4' (choose euler|heun)"),
        (["grid=cosine"], "error: grid: unknown value 'cosine' (choose geometric|karras)"),
        (["steps=0"], "error: steps: must be >= 1, got 0"),
    ],
)
def test_score_sampling_options_are_named_in_one_line(baseline_ckpt, args, start):
    assert one_line_error(run("evaluate.py", f"ckpt={baseline_ckpt}", *args)).startswith(start)


def test_a_precond_given_as_a_value_points_to_the_config_group(data_dir, tmp_path):
    line = one_line_error(
        run(
            "train.py",
            "experiment=baseline",
            "debug=smoke",
            f"paths.data_dir={data_dir}",
            "model.precond=edm",
            run_dir=tmp_path / "run",
        )
    )
    assert line.startswith("error: model.precond:") and "model/precond=eps|edm" in line
