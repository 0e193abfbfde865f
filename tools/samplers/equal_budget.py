"""`make compare-samplers REF=<gfn-diffusion checkout>` (python -m tools.samplers.equal_budget):
learning at an equal budget of iterations, mixlab vs the reference code (GFNOrg/gfn-diffusion,
`energy_sampling/`), on 25GMM "TB + Expl. + LS" (row `tb_expl_ls_gmm25` of versus_reference).

For every seed, each arm trains `--iterations` iterations and is evaluated at 0, every `--every`
iterations and at the end, all arms by the same code:
    reference                  the reference's training loop (versus_reference.ReferenceRun, the
                               flags of its README command), seed s;
    mixlab                     a Lightning fit of `experiment=sampler_gmm25_tb_expl_ls` (seed=s,
                               validation, logger and checkpoints off), evaluated from a callback;
    mixlab-reference-settings  the same with the reference code's settings where the two differ
                               (`reference_settings`: its MALA step-size rule, start and burn-in,
                               its buffer's draw order and doubled first add).
An evaluation draws `--n` trajectories of the current policy without exploration (mixlab:
`DiffusionSampler.sample_trajectories`; reference: its `get_trajectory_fwd`), both in chunks of
EVAL_CHUNK from one noise seed, so that both draw the same noise (at iteration 0, where both
policies are zero-initialised, every arm scores the same samples), takes
log w = log R(x_1) + sum log p_B - sum log p_F with mixlab's 25GMM log R, and reports
`mixlab.samplers.metrics.sampler_metrics` against `--n` exact samples of a fixed seed:
|Delta log Z_hat|, |Delta log Z_hat_RW|, W2 and the modes hit, with the training's wall seconds
so far (evaluations excluded). Printed: mean ± std (ddof 1) over the seeds per arm and
iteration; `--json` keeps every run, `--figure` draws the curves with a ± std band.

    python -m tools.samplers.equal_budget --reference PATH [--seeds 0 1 2] [--iterations 2000]
        [--every 250] [--n 2000] [--arms reference mixlab ...] [--json out.json] [--figure out.png]
"""

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tools.samplers.versus_reference import REFERENCE_DEFAULTS, ROWS, bare_fit

ROW = "tb_expl_ls_gmm25"
EVAL_SEED = 20_240  # trajectory noise of every evaluation (every arm, seed and iteration)
TRUTH_SEED = 20_241  # the exact samples every evaluation is compared with
EVAL_CHUNK = 500  # trajectories per rollout call: with the same seed both codes then draw the same noise
METRICS = {  # key in an evaluation -> label
    "abs_delta_log_z": "|Δlog Ẑ|",
    "abs_delta_log_z_rw": "|Δlog Ẑ_RW|",
    "w2": "W2",
    "modes_hit": "modes",
}
ARMS = ("reference", "mixlab", "mixlab-reference-settings")


def reference_settings(flags: dict) -> list[str]:
    """mixlab overrides that take the reference code's settings where they differ from the
    experiment's, for a row's flags: its MALA step-size rule (ReferenceStepSize under
    --ld_schedule, else a fixed step) restarted from --ld_step at every call, its burn-in
    (it keeps the steps i > burn_in: mixlab's burn_in + 1), and its replay buffer's DataLoader
    draw order and doubled first add."""
    a = {**REFERENCE_DEFAULTS, **flags}
    rule = "ReferenceStepSize" if a["ld_schedule"] else "FixedStepSize"
    return [
        f"model.local_search.rule._target_=mixlab.samplers.local_search.{rule}",
        "model.local_search.carry_step_size=false",
        f"model.local_search.step_size={a['ld_step']}",
        f"model.local_search.burn_in={a['burn_in'] + 1}",
        f"model.local_search.steps={a['max_iter_ls']}",
        f"model.local_search.every={a['ls_cycle']}",
        "model.buffer.draws=reference",
        "model.buffer.first_add_twice=true",
    ]


def arm_overrides(arm: str) -> list[str]:
    """The compose overrides of a mixlab arm (the row's experiment, then the arm's settings)."""
    experiment, flags = ROWS[ROW]
    return [*experiment, *(reference_settings(flags) if arm == "mixlab-reference-settings" else [])]


class Evaluator:
    """One evaluation, the same for every arm: `sampler_metrics` of n samples x [n,d] with log
    weights log_w [n] against n exact samples of 25GMM drawn once (seed TRUTH_SEED), plus the
    absolute errors."""

    def __init__(self, n: int):
        from mixlab.samplers.energies import GMM25

        self.n, self.energy = n, GMM25()
        self.truth = self.energy.sample(n, torch.Generator().manual_seed(TRUTH_SEED))

    def __call__(self, x: torch.Tensor, log_w: torch.Tensor) -> dict:
        from mixlab.samplers.metrics import sampler_metrics

        m = sampler_metrics(self.energy, x.detach().float(), log_w.detach(), self.truth)
        return {
            "abs_delta_log_z": abs(m["delta_log_z"]),
            "abs_delta_log_z_rw": abs(m["delta_log_z_rw"]),
            "w2": m.get("w2"),
            "modes_hit": m.get("modes_hit"),
            "log_z_hat": m["log_z_hat"],
            "log_z_rw": m["log_z_rw"],
        }


def due(iteration: int, every: int, iterations: int) -> bool:
    """Whether an arm is evaluated after `iteration` iterations: at 0, every `every`, at the end."""
    return iteration % every == 0 or iteration == iterations


# ------------------------------------------------------------------------------------ arms
def run_reference(checkout: Path, seed: int, iterations: int, every: int, evaluate: Evaluator) -> dict:
    """The reference's training loop, evaluated at the `due` iterations."""
    from mixlab.samplers.metrics import log_weights
    from tools.samplers.versus_reference import ReferenceRun

    run = ReferenceRun(checkout, ROWS[ROW][1], seed)
    evals, seconds = [], 0.0
    for it in range(iterations + 1):
        if due(it, every, iterations):
            x, log_pf, log_pb = run.trajectories(evaluate.n, EVAL_SEED, EVAL_CHUNK)
            m = evaluate(x, log_weights(evaluate.energy.log_reward(x), log_pf, log_pb))
            evals.append({"iteration": it, "train_seconds": seconds, "log_z_learned": run.log_z_learned(), **m})
        if it < iterations:
            start = time.perf_counter()
            run.step()
            seconds += time.perf_counter() - start
    return {"train_seconds": seconds, "evals": evals}


def run_mixlab(
    overrides: list[str], seed: int, iterations: int, every: int, evaluate: Evaluator, work: Path, threads: int = 1
) -> dict:
    """A Lightning fit of `iterations` iterations (seed `seed`; no validation, logger or
    checkpoints), evaluated from a callback at the `due` iterations."""
    from lightning.pytorch.callbacks import Callback

    from tools.gpu_check import compose

    evals, clock = [], {"seconds": 0.0, "start": None}

    class Evaluate(Callback):
        def record(self, trainer, system):
            if clock["start"] is not None:
                clock["seconds"] += time.perf_counter() - clock["start"]
            out = system.sample_trajectories(evaluate.n, torch.Generator(device=system.device).manual_seed(EVAL_SEED), EVAL_CHUNK)
            m = evaluate(out["x"], out["log_w"])
            learned = None if system.log_z is None else float(system.log_z.detach())
            evals.append({"iteration": trainer.global_step, "train_seconds": clock["seconds"], "log_z_learned": learned, **m})
            if system.ls.enabled:
                evals[-1].update(ls_step_size=system.ls_stats.get("step_size"), ls_acceptance=system.ls_stats.get("acceptance"))
            clock["start"] = time.perf_counter()

        def on_train_start(self, trainer, pl_module):
            self.record(trainer, pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if due(trainer.global_step, every, iterations):
                self.record(trainer, pl_module)

    cfg = compose(
        [
            *overrides,
            f"seed={seed}",
            "trainer=default",
            "trainer.max_epochs=-1",
            f"++trainer.max_steps={iterations}",
            "++trainer.limit_val_batches=0",
        ],
        work,
    )
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no accelerator / tip lines per fit (after its import)
    bare_fit(cfg, [Evaluate()], seed=seed)
    return {"train_seconds": clock["seconds"], "evals": evals}


# ------------------------------------------------------------------------- aggregation
def aggregate(runs: list[dict], metrics=tuple(METRICS) + ("train_seconds",)) -> dict[str, list[dict]]:
    """{arm: [{iteration, seeds, <metric>: {mean, std, values}}, ...]} over the runs' seeds at every
    iteration all of an arm's runs evaluated; std with ddof 1 (None for one seed); a None value
    (e.g. W2 not computed) counts as NaN."""
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        per_run = [{e["iteration"]: e for e in r["evals"]} for r in mine]
        rows = []
        for it in sorted(set.intersection(*(set(p) for p in per_run))):
            row = {"iteration": it, "seeds": [r["seed"] for r in mine]}
            for key in metrics:
                values = [math.nan if p[it].get(key) is None else float(p[it][key]) for p in per_run]
                std = float(np.std(values, ddof=1)) if len(values) > 1 else None
                row[key] = {"mean": float(np.mean(values)), "std": std, "values": values}
            rows.append(row)
        out[arm] = rows
    return out


def cell(stat: dict, digits: int) -> str:
    """'mean ± std' (no ± for one seed)."""
    std = "" if stat["std"] is None else f" ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{std}"


DIGITS = {"abs_delta_log_z": 3, "abs_delta_log_z_rw": 3, "w2": 2, "modes_hit": 1, "train_seconds": 0}


def table(summary: dict[str, list[dict]], iterations: list[int] | None = None) -> str:
    """A markdown table: one line per arm and iteration (all, or `iterations`)."""
    head = ["arm", "iteration", *(label.replace("|", "\\|") for label in METRICS.values()), "training s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, rows in summary.items():
        for row in rows:
            if iterations is None or row["iteration"] in iterations:
                cells = [cell(row[k], DIGITS[k]) for k in (*METRICS, "train_seconds")]
                lines.append(f"| {arm} | {row['iteration']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(summary: dict[str, list[dict]], path: Path, title: str) -> Path:
    """One panel per metric against the iteration, one line per arm with a ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    axes = axes.ravel()
    for k, (arm, rows) in enumerate(summary.items()):
        it = np.array([r["iteration"] for r in rows])
        for ax, key in zip(axes, METRICS):
            mean = np.array([r[key]["mean"] for r in rows])
            std = np.array([r[key]["std"] or 0.0 for r in rows])
            ax.plot(it, mean, marker="o", ms=3, color=f"C{k}", label=arm)
            ax.fill_between(it, mean - std, mean + std, color=f"C{k}", alpha=0.2, lw=0)
    for ax, (key, label) in zip(axes, METRICS.items()):
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if key.startswith("abs_delta"):
            ax.set_ylim(bottom=0)
        if key == "modes_hit":
            ax.set_ylim(0, 26)
            ax.axhline(25, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tools.samplers.equal_budget", description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, default=None, help="a GFNOrg/gfn-diffusion checkout (needed by the reference arm)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--n", type=int, default=2000, help="trajectories (and exact samples) per evaluation")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--figure", type=Path, default=None)
    args = p.parse_args(argv)
    if "reference" in args.arms and args.reference is None:
        p.error("--reference: give a gfn-diffusion checkout (or leave out the reference arm: --arms mixlab ...)")
    if args.iterations < 1 or args.every < 1 or args.n < 2:
        p.error("--iterations and --every must be >= 1, --n >= 2")
    torch.set_num_threads(args.threads)

    evaluate = Evaluator(args.n)
    runs = []
    print(
        f"25GMM TB + Expl. + LS, {args.iterations} iterations, evaluated every {args.every} on {args.n} trajectories, "
        f"{args.threads} thread(s)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            for arm in args.arms:
                start = time.perf_counter()
                if arm == "reference":
                    run = run_reference(args.reference, seed, args.iterations, args.every, evaluate)
                else:
                    run = run_mixlab(
                        arm_overrides(arm),
                        seed,
                        args.iterations,
                        args.every,
                        evaluate,
                        Path(work) / f"{arm}_{seed}",
                        args.threads,
                    )
                runs.append({"arm": arm, "seed": seed, **run})
                last = run["evals"][-1]
                print(
                    f"  seed {seed} {arm:<26} {run['train_seconds']:7.1f} s training ({time.perf_counter() - start:.0f} s in all); "
                    f"at {last['iteration']}: |Δlog Ẑ| {last['abs_delta_log_z']:.3f}  |Δlog Ẑ_RW| {last['abs_delta_log_z_rw']:.3f}  "
                    f"W2 {last['w2']:.2f}  modes {last['modes_hit']}",
                    flush=True,
                )
    summary = aggregate(runs)
    print(f"\nmean ± std over seeds {args.seeds}:")
    print(table(summary))
    result = {
        "row": ROW,
        "command": "python -m tools.samplers.equal_budget " + " ".join(sys.argv[1:] if argv is None else argv),
        "iterations": args.iterations,
        "every": args.every,
        "n": args.n,
        "seeds": args.seeds,
        "threads": args.threads,
        "eval_seed": EVAL_SEED,
        "truth_seed": TRUTH_SEED,
        "reference_flags": {**REFERENCE_DEFAULTS, **ROWS[ROW][1]},
        "arms": {arm: None if arm == "reference" else arm_overrides(arm) for arm in args.arms},
        "summary": summary,
        "runs": runs,
    }
    if args.json:
        from mixlab.core.checkpoint_io import write_json_atomic

        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, result)
        print(f"json:   {args.json}")
    if args.figure:
        title = f"25GMM TB + Expl. + LS: mean ± std over seeds {', '.join(map(str, args.seeds))}, n = {args.n}"
        print(f"figure: {figure(summary, args.figure, title)}")
    return result


if __name__ == "__main__":
    main()
