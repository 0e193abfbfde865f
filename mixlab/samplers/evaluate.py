"""The `sampler` evaluator: `python evaluate.py ckpt=PATH [n=2000 seed=0 batch_size=500
reference_seeds=5 figure=true]` (or `make eval ckpt=PATH ...`) on a DiffusionSampler checkpoint.

n fresh trajectories of the policy (no exploration; noise seed `seed`) and n fresh exact samples
(seed `seed + TRUTH_OFFSET`: not the validation's set) give
    log Z_hat, log Z_hat_RW, Delta = log Z - estimate (signed; |Delta| in tables), the EUBO
    (backward trajectories of the exact samples), W2 (exact OT), the energy's own statistics
    (Energy.sample_statistics: 25GMM modes hit, Manywell shallow-well share), the learned log Z (TB),
and, read beside the W2, the reference rows at the same n (exact vs exact, mode-dropping
controls: Energy.mode_controls). LGCP: raw log Z_hat / log Z_hat_RW, no W2 / EUBO.
Writes <run>/eval/sampler_n<n>_seed<seed>.json and .png.
"""

import math
import time
from pathlib import Path
from typing import Annotated

import torch
from omegaconf import DictConfig
from pydantic import Field

from mixlab.core.checkpoint import load_system
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.evaluate import out_dir_of, resolve_device
from mixlab.core.validate import NonNegativeInt, PositiveInt, checked
from mixlab.samplers.figures import draw, title_of
from mixlab.samplers.metrics import reference_rows_for

TRUTH_OFFSET = 1_000_003  # exact samples of the evaluation: a stream no validation or trajectory uses


@checked
def _options(
    n: Annotated[int, Field(ge=2)], batch_size: PositiveInt, reference_seeds: NonNegativeInt, seed: NonNegativeInt
) -> None:
    """The evaluator's numbers (n >= 2: log Z estimates and W2 need samples)."""


def validate(cfg: DictConfig) -> None:
    try:
        _options(**{key: cfg.get(key) for key in ("n", "batch_size", "reference_seeds", "seed")})
    except ArgumentError as err:  # the evaluator's options sit at the top of its config
        raise ConfigError(err.arg, err.problem) from None


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    return value


def evaluate(cfg: DictConfig) -> dict:
    validate(cfg)
    device = resolve_device(cfg.device)
    system, run_cfg, ckpt = load_system(cfg.ckpt, device)
    system.energy.prepare()
    energy, n, seed = system.energy, int(cfg.n), int(cfg.seed)
    truth = energy.sample(n, torch.Generator(device=device).manual_seed(seed + TRUTH_OFFSET))
    t0 = time.perf_counter()
    result = system.evaluation(n, seed, truth, chunk=int(cfg.batch_size))
    seconds = time.perf_counter() - t0
    metrics = {k: _clean(v) for k, v in result["metrics"].items()}
    t0 = time.perf_counter()
    rows = reference_rows_for(energy, n, range(int(cfg.reference_seeds))) if cfg.reference_seeds and truth is not None else []
    reference_seconds = time.perf_counter() - t0

    out_dir = out_dir_of(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"sampler_n{n}_seed{seed}"
    figure = None
    if cfg.figure:
        figure = draw(
            energy,
            result["x"],
            truth,
            out_dir / f"{tag}.png",
            f"{run_cfg.task_name}: {title_of(metrics, ckpt.get('global_step'), energy)}",
        )
    state = ckpt.get("sampler_state") or {}
    report = {
        "ckpt": str(Path(cfg.ckpt).resolve()),
        "energy_summary": energy.describe(metrics),
        "experiment": run_cfg.get("task_name"),
        "global_step": ckpt.get("global_step"),
        "epoch": ckpt.get("epoch"),
        "energy": type(energy).__name__,
        "dim": energy.dim,
        "log_z": energy.log_z,
        "objective": system.objective.name,
        "policy": type(system.policy).__name__,
        "T": system.rollout.T,
        "sigma2": system.rollout.sigma2,
        "n": n,
        "seed": seed,
        "truth_seed": seed + TRUTH_OFFSET if truth is not None else None,
        "device": str(device),
        "seconds": round(seconds, 2),
        **metrics,
        "abs_delta_log_z": None if metrics.get("delta_log_z") is None else abs(metrics["delta_log_z"]),
        "abs_delta_log_z_rw": None if metrics.get("delta_log_z_rw") is None else abs(metrics["delta_log_z_rw"]),
        "buffer_size": len(system.buffer) if system.buffer is not None else None,
        "ls_buffer_size": len(system.ls_buffer) if system.ls_buffer is not None else None,
        "ls_acceptance": state.get("ls_stats", {}).get("acceptance"),
        "ls_step_size": state.get("ls_step_size") if system.ls.enabled else None,
        "ls_calls": state.get("ls_stats", {}).get("calls"),
        "reference_w2": [
            {"name": r.name, "mean": r.mean, "std": r.std, "seeds": len(r.values), "values": r.values} for r in rows
        ],
        "reference_seconds": round(reference_seconds, 2),
        "figure": str(figure) if figure else None,
    }
    path = out_dir / f"{tag}.json"
    from mixlab.core.checkpoint_io import write_json_atomic

    write_json_atomic(path, report)
    report["metrics_json"] = str(path)
    print_report(report)
    return report


def print_report(r: dict) -> None:
    def fmt(key, digits=3):
        value = r.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    print(
        f"[mixlab] {r['experiment']} @ step {r['global_step']}: {r['n']} trajectories (seed {r['seed']}) in {r['seconds']} s "
        f"on {r['device']}; {r['energy']} d={r['dim']}, {r['objective']}"
    )
    if r["log_z"] is not None:
        print(
            f"[mixlab]   log Z = {r['log_z']:.4f}   log Z^ = {fmt('log_z_hat')} (Delta {fmt('delta_log_z')})   "
            f"log Z^_RW = {fmt('log_z_rw')} (Delta {fmt('delta_log_z_rw')})   EUBO = {fmt('eubo')}"
        )
    else:
        print(f"[mixlab]   log Z unknown   log Z^ = {fmt('log_z_hat')}   log Z^_RW = {fmt('log_z_rw')}")
    extra = [
        f"learned log Z = {fmt('log_z_learned')}" if r.get("log_z_learned") is not None else None,
        r.get("energy_summary") or None,
        f"LS acceptance {fmt('ls_acceptance')}, step size {fmt('ls_step_size', 4)}"
        if r.get("ls_acceptance") is not None
        else None,
        f"buffers {r['buffer_size']} / {r['ls_buffer_size']}" if r.get("buffer_size") is not None else None,
    ]
    if any(extra):
        print("[mixlab]   " + "   ".join(e for e in extra if e))
    if r.get("w2") is not None:
        print(f"[mixlab]   W2 = {r['w2']:.3f}   <- read beside the reference rows at n = {r['n']}:")
        for row in r["reference_w2"]:
            print(f"[mixlab]      {row['name']:<40} W2 = {row['mean']:.3f} ± {row['std']:.3f} ({row['seeds']} seeds)")
    print(f"[mixlab] metrics: {r['metrics_json']}")
    if r.get("figure"):
        print(f"[mixlab] figure:  {r['figure']}")
