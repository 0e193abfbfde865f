"""Multi-node DDP as Lightning runs it (trainer.num_nodes), on this machine: two `train.py`
"nodes" started by hand (MASTER_ADDR / MASTER_PORT / NODE_RANK) or as `srun` starts them
(SLURM_* variables, Lightning's SLURMEnvironment) reach the weights of one process; the SLURM
launcher (conf/hydra/launcher/slurm.yaml) asks SLURM for the trainer's shape; and a sweep
through submitit's local executor runs end to end. A real SLURM cluster is not tested here."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support import EXACT, ROOT, compose_train, env_for_subprocess

TWO_NODES = ["trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2"]
# variables that would make Lightning pick another cluster environment (or another rank)
FOREIGN = (
    "SLURM_",
    "TORCHELASTIC_",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "JSM_",
    "LSB_",
    "OMPI_",
    "PMI_",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in env_for_subprocess().items() if not k.startswith(FOREIGN)}
    # One thread per process: two "nodes" share this machine's cores, and OpenMP threads that
    # outnumber the cores make a smoke run several times slower. A real node has its own.
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run_together(cmds: list[list[str]], envs: list[dict], logs: list[Path], timeout: float) -> list[int]:
    """Start all commands at once (each in its own process group, output to its log file) and
    wait for all; the first that fails, or the deadline, kills every one still running (a
    rank whose peer died would otherwise wait in the rendezvous for half an hour)."""
    procs = []
    try:
        for cmd, env, log in zip(cmds, envs, logs):
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.5)
        return [p.poll() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def report(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists())


def raw_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["current_model_state"]


@pytest.fixture(scope="module")
def weights_of_one_process(data_dir, tmp_path_factory) -> dict:
    from mixlab.core.pipeline import train

    cfg = compose_train(EXACT, data_dir, tmp_path_factory.mktemp("multinode") / "one")
    train(cfg)
    return raw_weights(Path(cfg.paths.output_dir))


def node_env(launch: str, rank: int, port: int) -> dict:
    if launch == "by_hand":
        return clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(rank))
    # what `srun` gives each task of `sbatch --nodes=2 --ntasks-per-node=1`; no MASTER_ADDR or
    # NODE_RANK, so only Lightning's SLURMEnvironment can tell the two processes apart
    return clean_env(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="train",
        SLURM_NNODES="2",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NODELIST="127.0.0.1",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID="0",
        SLURM_NODEID=str(rank),
        MASTER_PORT=str(port),
    )


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["by_hand", "srun"])
def test_two_nodes_reach_the_weights_of_one_process(launch, weights_of_one_process, data_dir, tmp_path):
    port, runs = free_port(), [tmp_path / f"node{r}" for r in (0, 1)]
    logs = [tmp_path / f"node{r}.log" for r in (0, 1)]
    # each node its own Hydra run dir (as on separate machines); the global batch stays debug=smoke's 16
    cmds = [
        [sys.executable, "train.py", *EXACT, *TWO_NODES, f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"] for run in runs
    ]
    codes = run_together(cmds, [node_env(launch, r, port) for r in (0, 1)], logs, timeout=400)
    assert codes == [0, 0], report(logs)
    assert "MEMBER: 2/2" in logs[1].read_text(), report(logs)  # a 2-process world, node 1 = global rank 1
    assert not (runs[1] / "checkpoints").exists()  # only global rank 0 writes checkpoints and the summary
    assert (runs[0] / "summary.json").is_file() and not (runs[1] / "summary.json").exists()
    two = raw_weights(runs[0])
    for key, w in weights_of_one_process.items():
        torch.testing.assert_close(two[key], w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "env,rank", [({}, 0), ({"LOCAL_RANK": "1"}, 1), ({"SLURM_LOCALID": "3"}, 3), ({"LOCAL_RANK": "0", "SLURM_LOCALID": "2"}, 0)]
)
def test_local_rank_before_the_trainer_exists(monkeypatch, env, rank):
    """Who may download data (prepare_data, one process per node): srun's tasks carry only SLURM_LOCALID."""
    from mixlab.core.distributed import local_rank

    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert local_rank() == rank


def test_slurm_launcher_asks_for_the_trainers_shape(tmp_path):
    """`-m hydra/launcher=slurm` up to the sbatch call (stand-ins: an sbatch that keeps the script
    and fails, an srun that submitit only looks for): nodes, tasks and GPUs per node follow
    trainer.num_nodes / trainer.devices."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bin_dir, script = tmp_path / "bin", tmp_path / "submission.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nfor a; do last="$a"; done\ncp "$last" {script}\necho "stand-in sbatch: nothing submitted" >&2\nexit 1\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "experiment=mcl_k4",
        "trainer=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=8",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=720",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert script.is_file(), proc.stderr[-3000:]
    flags = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    for flag in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--time=720", "--partition=gpu", "--job-name=mcl_k4"):
        assert f"#SBATCH {flag}" in flags, flags
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in script.read_text().splitlines())


@pytest.mark.slow
def test_a_sweep_runs_through_submitit_local(data_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        "experiment=baseline",
        "debug=smoke",
        "trainer.max_epochs=1",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}",
    ]
    assert run_together([cmd], [clean_env()], [log], timeout=400) == [0], report([log])
    run = sweep / "0"  # hydra.sweep.subdir: the job number
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "summary.json").is_file(), report([log])
    job_logs = list((sweep / ".submitit").glob("*/*_0_log.out"))  # it ran in submitit's job, not in this process
    assert len(job_logs) == 1 and "[mixlab] run dir:" in job_logs[0].read_text()
