"""`make gpu-check ARGS=--tiny`: the GPU check's code path on the CPU at tiny sizes."""

import json
import subprocess
import sys

import pytest
from support import ROOT, env_for_subprocess


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_row(data_dir, tmp_path):
    from tools.gpu_check import SYSTEMS

    report_path = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--tiny", "--data-dir", str(data_dir), "--json", str(report_path)],
        cwd=ROOT,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    rows = report["rows"]
    sections = {r["section"] for r in rows}
    assert sections == {"bench", "systems", "cli"}
    # every system trained through Lightning, with a throughput in its own unit
    systems = {r["row"]: r for r in rows if r["section"] == "systems"}
    assert set(systems) == set(SYSTEMS)
    for r in systems.values():
        assert r["steps_timed"] >= 1 and r["items_per_sec"] == pytest.approx(r[f"{r['unit']}_per_sec"])
    # the reference row of each benchmark is the 1.00x of its ratios; SEDD sampling rows count NFE
    bench = [r for r in rows if r["section"] == "bench"]
    assert any(r["row"].startswith("sedd sample:") and r["nfe"] >= 1 for r in bench)
    assert [r["speedup_vs_reference"] for r in bench if r["row"].startswith("baseline:")][0] == 1.0
    # the CLI runs and the exact resume
    cli = {r["row"]: r for r in rows if r["section"] == "cli"}
    resume = next(r for name, r in cli.items() if name.startswith("exact resume"))
    assert resume["ok"] and resume["max_abs_diff"] <= 1e-6 and resume["global_step"] > 0
    assert all(r["ok"] for r in cli.values())
    assert "exact resume" in proc.stdout  # the printed table
