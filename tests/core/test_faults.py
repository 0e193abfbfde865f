"""Faults a run must survive or report in one line: interrupted and damaged checkpoints, foreign
checkpoints, signals, full and read-only disks."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from support import ROOT, compose_train, env_for_subprocess

from mixlab.core import checkpoint_io
from mixlab.core.checkpoint import read_checkpoint, resolve_resume
from mixlab.core.checkpoint_io import AtomicCheckpointIO, save_with_digest, sidecar_of, verify_digest
from mixlab.core.errors import ConfigError, DiskError, Interrupted
from mixlab.core.evaluate import evaluator_for
from mixlab.core.pipeline import build_plugins, train

SMOKE = ["experiment=baseline", "debug=smoke"]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    """A smoke baseline run dir: checkpoints/last.ckpt (epoch 1) and best_*.ckpt, each with its sidecar."""
    out = tmp_path_factory.mktemp("faults") / "run"
    train(compose_train(SMOKE, data_dir, out))
    return out


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def damage(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "header":  # the zip record header of the first entry
        data[:64] = bytes(64)
        path.write_bytes(data)
    else:  # 4 KB of random bytes in the middle (inside tensor data), size unchanged
        middle = len(data) // 2
        data[middle : middle + 4096] = os.urandom(4096)
        path.write_bytes(data)


def one_line(err: BaseException) -> str:
    assert "\n" not in str(err), str(err)
    return str(err)


# ----- atomic writes ------------------------------------------------------------------------
def test_every_checkpoint_has_a_matching_sidecar(trained):
    ckpts = sorted((trained / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) >= 2
    for path in ckpts:
        assert sidecar_of(path).is_file() and verify_digest(path) is None
    assert not list((trained / "checkpoints").glob(".*tmp*"))  # no temporary file left


def test_an_interrupted_write_leaves_the_previous_file_intact_and_resume_works(run_copy, monkeypatch, data_dir):
    last = run_copy / "checkpoints" / "last.ckpt"
    before, checkpoint = last.read_bytes(), torch.load(last, weights_only=False)
    real_save = torch.save

    for cut in range(1, 40):  # a kill after `cut` writes of torch.save's stream

        def killed(obj, file, cut=cut):
            class Dying:
                calls = 0

                def write(self, data):
                    Dying.calls += 1
                    if Dying.calls > cut:
                        raise KeyboardInterrupt
                    return file.write(data)

                def flush(self):
                    file.flush()

            real_save(obj, Dying())

        monkeypatch.setattr(checkpoint_io.torch, "save", killed)
        with pytest.raises((KeyboardInterrupt, RuntimeError)):  # torch reports the broken stream as a RuntimeError
            save_with_digest({**checkpoint, "global_step": 10**6}, last)
        assert last.read_bytes() == before and verify_digest(last) is None
        assert not list(last.parent.glob(".*tmp*"))
    monkeypatch.undo()
    summary = train(compose_train([*SMOKE, "trainer.max_epochs=3"], data_dir, run_copy))
    assert summary["global_step"] == 12  # 3 epochs of 4 steps


@pytest.mark.slow
def test_kill_9_during_large_checkpoint_writes_never_damages_the_file(tmp_path):
    path = tmp_path / "last.ckpt"
    x = torch.randn(4_000_000)  # 16 MB
    for attempt in range(8):
        pid = os.fork()
        if pid == 0:  # the writer, killed at some moment of a write
            try:
                for step in range(1, 10**6):
                    save_with_digest({"global_step": step, "x": x}, path)
            finally:
                os._exit(0)
        time.sleep(0.05 + 0.11 * attempt)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if path.is_file():
            assert verify_digest(path) is None
            assert read_checkpoint(path, "ckpt_path")["global_step"] >= 1


# ----- damaged checkpoints ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["truncated", "header", "tensor bytes"])
def test_a_damaged_last_ckpt_is_skipped_on_auto_resume(run_copy, data_dir, kind):
    last = run_copy / "checkpoints" / "last.ckpt"
    best = next((run_copy / "checkpoints").glob("best_*.ckpt"))
    damage(last, kind)
    with pytest.warns(UserWarning, match="skipped unreadable checkpoint") as record:
        assert resolve_resume(None, run_copy, run_copy.parent) == str(best)
    assert str(last) in str(record[0].message)
    if kind == "tensor bytes":
        assert "checksum mismatch" in str(record[0].message)
        with pytest.warns(UserWarning, match="skipped unreadable checkpoint .*last.ckpt"):
            summary = train(compose_train([*SMOKE, "trainer.max_epochs=3"], data_dir, run_copy))
        assert summary["global_step"] == 12  # from the best checkpoint to the end of epoch 3


@pytest.mark.parametrize("kind", ["truncated", "header", "tensor bytes"])
def test_a_damaged_checkpoint_given_by_path_is_one_line_naming_the_key(run_copy, make_cfg, kind):
    last = run_copy / "checkpoints" / "last.ckpt"
    damage(last, kind)
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*SMOKE, f"ckpt_path={last}"))
    assert one_line(err.value).startswith(f"ckpt_path: checkpoint {last} is damaged (checksum mismatch")
    for key in ("model.experts_ckpt", "model.init_from"):
        with pytest.raises(ConfigError, match=f"^{key}: checkpoint .*last.ckpt is damaged"):
            read_checkpoint(last, key)
    with pytest.raises(ConfigError, match=r"^ckpt: checkpoint .*last.ckpt is damaged") as err:
        evaluator_for(str(last))
    one_line(err.value)


def test_a_damaged_checkpoint_without_sidecar_is_unreadable_in_one_line(run_copy):
    last = run_copy / "checkpoints" / "last.ckpt"
    sidecar_of(last).unlink()  # as written by an older version
    damage(last, "header")
    with pytest.raises(ConfigError, match=r"^ckpt_path: cannot read checkpoint") as err:
        read_checkpoint(last, "ckpt_path")
    one_line(err.value)


def test_a_foreign_checkpoint_for_ckpt_path_names_both_classes(trained, make_cfg):
    last = trained / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as err:
        train(make_cfg("experiment=mcl_k4", "debug=smoke", f"ckpt_path={last}"))
    assert one_line(err.value) == f"ckpt_path: {last} is a ScoreDiffusion checkpoint; experiment mcl_k4 trains MCLDiffusion"


def test_a_checkpoint_of_another_model_shape_is_one_line(trained, make_cfg):
    last = trained / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"^ckpt_path: .* does not fit the configured model") as err:
        train(make_cfg(*SMOKE, "model.net.base_ch=16", f"ckpt_path={last}"))
    one_line(err.value)


# ----- full and read-only disks ------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_no_damaged_checkpoint(run_copy, data_dir, monkeypatch, code):
    last = run_copy / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    if code == errno.ENOSPC:  # the disk fills up in the middle of the checkpoint

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(checkpoint_io._HashingWriter, "write", write)
    else:  # a read-only file system refuses the rename

        def replace(src, dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

        monkeypatch.setattr(checkpoint_io.os, "replace", replace)
    with pytest.raises(DiskError) as err:
        train(compose_train([*SMOKE, "trainer.max_epochs=3"], data_dir, run_copy))
    line = one_line(err.value)
    assert line.startswith("cannot write ") and errno.errorcode[code] in line and str(run_copy / "checkpoints") in line
    monkeypatch.undo()
    assert last.read_bytes() == before and verify_digest(last) is None
    assert not list(last.parent.glob(".*tmp*"))


# ----- plugins ------------------------------------------------------------------------------
def test_the_checkpoint_io_composes_with_ddp_and_keeps_user_plugins(make_cfg):
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from omegaconf import open_dict

    from mixlab.core.config import build

    cfg = make_cfg(*SMOKE, "trainer=ddp_cpu", "trainer.devices=2")
    trainer = build(cfg.trainer, plugins=build_plugins(cfg.trainer))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    with open_dict(cfg):  # +trainer.plugins=[...] on the command line
        cfg.trainer.plugins = [{"_target_": "lightning.pytorch.plugins.environments.LightningEnvironment"}]
    plugins = build_plugins(cfg.trainer)
    assert isinstance(plugins[0], LightningEnvironment) and isinstance(plugins[1], AtomicCheckpointIO)
    cfg.trainer.plugins = [{"_target_": "lightning.pytorch.plugins.io.TorchCheckpointIO"}]  # a user's own CheckpointIO
    assert [type(p).__name__ for p in build_plugins(cfg.trainer)] == ["TorchCheckpointIO"]


# ----- quiet output -----------------------------------------------------------------------
def test_no_accelerator_banner_and_no_not_empty_warning_on_resume():
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_warn

    from mixlab.core.quiet import quiet_lightning

    quiet_lightning()
    with warnings.catch_warnings(record=True) as caught:
        rank_zero_warn("Checkpoint directory /logs/run/checkpoints exists and is not empty.")
    assert not caught
    handlers = logging.getLogger("lightning.pytorch").handlers
    record = logging.LogRecord(
        "lightning.pytorch.utilities.rank_zero", logging.INFO, __file__, 1, "GPU available: False, used: False", None, None
    )
    assert handlers and all(not h.filter(record) for h in handlers)


# ----- signals ------------------------------------------------------------------------------
def test_evaluation_ends_on_sigterm_with_exit_code_143():
    from mixlab.core.signals import raise_on_signals

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        raise_on_signals("evaluation")
        with pytest.raises(Interrupted) as err:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert err.value.exit_code == 143 and "SIGTERM" in one_line(err.value)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SendSignal(L.Callback):
    """Sends `signum` to this process after optimizer step `at` (as `kill` or Ctrl+C would)."""

    def __init__(self, signum: int, at: int):
        self.signum, self.at = signum, at

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_training_saves_a_checkpoint_and_the_same_command_resumes(make_cfg, signum):
    cfg = make_cfg(
        *SMOKE, "trainer.max_epochs=3", f"+callbacks.kill={{_target_: test_faults.SendSignal, signum: {int(signum)}, at: 6}}"
    )
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(Interrupted) as err:
        train(cfg)
    assert err.value.exit_code == 128 + signum
    last = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    assert one_line(err.value).startswith(
        f"training stopped by {signal.Signals(signum).name} at global step 6 (epoch 1); "
        f"checkpoint written: {last}. Resume: the same command with ckpt_path=last"
    )
    assert read_checkpoint(last, "ckpt_path")["global_step"] == 6  # verified against its sidecar
    del cfg.callbacks.kill
    assert train(cfg)["global_step"] == 12
    assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT] and signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]


@pytest.mark.slow
def test_sigterm_to_a_training_process_exits_143_with_one_line(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "train.py", *SMOKE, "trainer.max_epochs=500", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env_for_subprocess(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt.sha256").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "GPU available" not in out + err and "Received SIGTERM" not in out + err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "ckpt_path=last" in lines[0], err[-3000:]
    # a signal during validation saves nothing new (the averaged weights are swapped in): the epoch's checkpoint stays
    assert "checkpoint written" in lines[0] or "no new checkpoint" in lines[0], lines[0]
    read_checkpoint(run_dir / "checkpoints" / "last.ckpt", "ckpt_path")  # complete, and verified against its sidecar


def test_a_full_disk_met_by_any_write_is_one_line(capsys):
    """A figure, a sample grid or a log file that cannot be written: one line naming it, exit 2."""
    import errno

    from mixlab.core.cli import run_or_exit

    def task(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/samples/epoch_3.png")

    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(task, None)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write /runs/x/samples/epoch_3.png (ENOSPC: the disk is full)")

    def other(cfg):
        raise FileNotFoundError(errno.ENOENT, "missing", "/x")

    with pytest.raises(FileNotFoundError):  # not a disk problem: a bug shows its traceback
        run_or_exit(other, None)
