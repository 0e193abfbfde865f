"""Which checkpoint a resume picks: the furthest readable one, last.ckpt on a tie, whatever the
files' modification times say."""

import os
from pathlib import Path

import pytest
import torch

from mixlab.core.checkpoint import resolve_resume


def _write(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_a_copied_run_dir_resumes_from_last_not_from_a_newer_best(tmp_path):
    run = tmp_path / "run"
    last = _write(run / "checkpoints" / "last.ckpt", 5000, mtime=1_000)
    _write(run / "checkpoints" / "best_epoch006.ckpt", 3500, mtime=2_000)  # newer file, earlier step
    assert resolve_resume(None, run, tmp_path) == str(last)


def test_a_tie_in_step_goes_to_last_ckpt(tmp_path):
    run = tmp_path / "run"
    last = _write(run / "checkpoints" / "last.ckpt", 800, mtime=1_000)
    _write(run / "checkpoints" / "best_epoch015.ckpt", 800, mtime=2_000)
    assert resolve_resume(None, run, tmp_path) == str(last)


def test_an_unreadable_furthest_file_is_skipped_with_a_warning(tmp_path):
    run = tmp_path / "run"
    last = _write(run / "checkpoints" / "last.ckpt", 900, mtime=2_000)
    last.write_bytes(last.read_bytes()[:40])
    best = _write(run / "checkpoints" / "best_epoch003.ckpt", 400, mtime=1_000)
    with pytest.warns(UserWarning, match="skipped unreadable checkpoint") as record:
        assert resolve_resume(None, run, tmp_path) == str(best)
    assert str(last) in str(record[0].message)


def test_ckpt_path_last_takes_the_newest_run_then_its_furthest_checkpoint(tmp_path):
    task = tmp_path / "logs" / "task"
    _write(task / "runs" / "old" / "checkpoints" / "last.ckpt", 9000, mtime=1_000)  # longer, but older run
    newest = _write(task / "runs" / "new" / "checkpoints" / "last.ckpt", 300, mtime=3_000)
    _write(task / "runs" / "new" / "checkpoints" / "best_epoch001.ckpt", 200, mtime=3_500)
    assert resolve_resume("last", tmp_path / "out", task) == str(newest)
    # a newest run with nothing readable is passed over for the next one
    broken = sorted((task / "runs" / "new" / "checkpoints").glob("*.ckpt"))
    for path in broken:
        path.write_bytes(b"")
        os.utime(path, (4_000, 4_000))
    with pytest.warns(UserWarning, match="skipped unreadable checkpoint") as record:
        assert resolve_resume("last", tmp_path / "out", task) == str(task / "runs" / "old" / "checkpoints" / "last.ckpt")
    assert all(any(str(path) in str(w.message) for w in record) for path in broken)
