"""`make table-samplers [SEEDS=3 ITERS=]` (python -m tools.samplers.table): the paper's Table 1
rows for 25GMM {TB, TB+Expl, TB+Expl+LS, FL-SubTB+LP} and Manywell-32 {TB, TB+Expl+LS,
TB+Expl+LP+LS}, each trained with SEEDS seeds (train.py, the experiment as configured; ITERS
replaces the iteration count) and evaluated on its final checkpoint (evaluate.py, n = 2000,
fresh exact samples), then table.md / table.json with

    mean ± std (ddof 1) over the seeds of |Delta log Z_hat|, |Delta log Z_hat_RW| and W2, beside the
    paper's mean ± std (5 runs; Sendera et al. 2024, Table 1), a two-sided Welch t-test per
    metric (flag * at p < 0.05), iterations, device and wall time per run, the overrides each row's
    runs were trained with beyond the experiment (from their .hydra/overrides.yaml), and the W2 reference rows;
    curves.png: every run's validation |Δlog Ẑ|, |Δlog Ẑ_RW| and W2 against the iteration.

Runs go to <out>/runs/<experiment>_seed<s>/; a run whose evaluation JSON exists is not repeated
(re-running the command resumes a table). Arguments after `--` are passed to every train.py run
(e.g. `-- trainer=gpu`: the experiments keep fp32). `--finished-only` trains nothing: it tabulates
the finished runs of seeds < SEEDS in <out> (a table completed over several sessions, or several
commands writing into one <out>), and leaves out rows with none. `--seed N` trains and
evaluates only seed N of each row and writes no table: seeds of one row in parallel (one command
each, the same --out), then `--finished-only` tabulates them. The paper's numbers are read from
tools/samplers/paper.yaml.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from tools.samplers.curves import plot_table_curves
from tools.samplers.paper import METRICS, PAPER_RUNS, TABLE_ROWS, paper_row

ROOT = Path(__file__).resolve().parents[2]
LABELS = {
    "abs_delta_log_z": "|Δlog Ẑ|",
    "abs_delta_log_z_rw": "|Δlog Ẑ_RW|",
    "w2": "W2",
    "log_z_hat": "log Ẑ",
    "log_z_rw": "log Ẑ_RW",
}


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({model}, {os.cpu_count()} cores)"


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PROJECT_ROOT": str(ROOT)})
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise SystemExit(f"error: {' '.join(cmd[1:4])} ... failed (exit {proc.returncode}); see {log}:\n  " + "\n  ".join(tail))
    return time.perf_counter() - t0


def _paths(experiment: str, seed: int, out: Path, n: int) -> tuple[Path, Path, Path]:
    """A run's directory, evaluation JSON and timing JSON."""
    run_dir = out / "runs" / f"{experiment}_seed{seed}"
    return run_dir, run_dir / "eval" / f"sampler_n{n}_seed{seed}.json", run_dir / "table_timing.json"


# What the table itself passes to train.py: not part of a run's configuration as tabulated.
TABLE_KEYS = ("experiment", "seed", "logger", "callbacks.progress_bar", "hydra.run.dir", "model.eval_every", "trainer.max_epochs")


def run_overrides(run_dir: Path) -> list[str]:
    """The overrides a run was trained with beyond the table's own (the arguments after `--`)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [o for o in OmegaConf.load(path) if o.split("=", 1)[0].lstrip("+~") not in TABLE_KEYS]


def finished_run(experiment: str, seed: int, out: Path, n: int) -> dict | None:
    """The evaluation JSON + timings + overrides of a finished run, or None."""
    run_dir, result_path, timing_path = _paths(experiment, seed, out, n)
    if result_path.is_file() and timing_path.is_file():
        return {**json.loads(result_path.read_text()), **json.loads(timing_path.read_text()), "overrides": run_overrides(run_dir)}
    return None


def run_one(experiment: str, seed: int, out: Path, iters: int | None, eval_every: int, n: int, extra: list[str]) -> dict:
    """Train (unless done) and evaluate the final checkpoint; returns the evaluation JSON + timings + overrides."""
    done = finished_run(experiment, seed, out, n)
    if done is not None:
        return done
    run_dir, result_path, timing_path = _paths(experiment, seed, out, n)
    run_dir.mkdir(parents=True, exist_ok=True)
    train = [
        sys.executable,
        "train.py",
        f"experiment={experiment}",
        f"seed={seed}",
        "logger=csv",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run_dir}",
    ]
    if iters:
        train += [f"model.eval_every={eval_every}", f"trainer.max_epochs={math.ceil(iters / eval_every)}"]
    train_s = _run(train + extra, run_dir / "table.log")
    evaluate = [
        sys.executable,
        "evaluate.py",
        f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"n={n}",
        f"seed={seed}",
        "reference_seeds=0",
    ]
    eval_s = _run(evaluate, run_dir / "table.log")
    timing = {"train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1), "host": device_description()}
    timing_path.write_text(json.dumps(timing))
    return finished_run(experiment, seed, out, n)


def welch_p(ours: list[float], paper: tuple[float, float]) -> float | None:
    """Two-sided Welch t-test of our runs against the paper's mean / std over PAPER_RUNS runs."""
    from scipy.stats import ttest_ind_from_stats

    if len(ours) < 2 or any(v is None for v in ours):
        return None
    p = ttest_ind_from_stats(
        np.mean(ours), np.std(ours, ddof=1), len(ours), paper[0], paper[1], PAPER_RUNS, equal_var=False
    ).pvalue
    return None if math.isnan(p) else float(p)


def summarise(experiment: str, runs: list[dict]) -> dict:
    energy, method, *paper = paper_row(experiment)
    row = {
        "experiment": experiment,
        "energy": energy,
        "method": method,
        "seeds": len(runs),
        "iterations": runs[0]["global_step"],
        "device": runs[0].get("host"),
        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs])),
        "eval_seconds_mean": float(np.mean([r["eval_seconds"] for r in runs])),
        "overrides": sorted({" ".join(r.get("overrides", [])) for r in runs}),
    }
    for metric, ref in zip(METRICS, paper):
        values = [r.get(metric) for r in runs]
        ok = [v for v in values if v is not None]
        row[metric] = {
            "values": values,
            "mean": float(np.mean(ok)) if ok else None,
            "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
            "paper": list(ref) if ref else None,
            "welch_p": welch_p(values, ref) if ref else None,
        }
    return row


def _cell(m: dict, digits: int = 3) -> str:
    if m["mean"] is None:
        return "n/a"
    std = f" ± {m['std']:.{digits}f}" if m["std"] is not None else ""
    flag = "*" if m["welch_p"] is not None and m["welch_p"] < 0.05 else ""
    return f"{m['mean']:.{digits}f}{std}{flag}"


def markdown(rows: list[dict], references: dict, args) -> str:
    devices = ", ".join(sorted({str(r["device"]) for r in rows}))
    if args.finished_only:
        budget = f"Seeds: the finished runs among seeds 0-{args.seeds - 1} (seeds column). Iterations: per row (iters column)."
    else:
        budget = f"Seeds: {args.seeds}. Iterations: {'as configured (25,000; LP 10,000)' if not args.iters else args.iters}."
    lines = [
        f"# Diffusion samplers: Table 1 rows ({datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"Device: {devices}. {budget} "
        f"Evaluation: final checkpoint, n = {args.eval_n} trajectories vs {args.eval_n} fresh exact samples.",
        "Ours: mean ± std (ddof 1) over the seeds; paper: mean ± std over 5 runs (Sendera et al. 2024, Table 1). "
        "`*`: differs from the paper (two-sided Welch t-test, p < 0.05). W2 = sqrt(exact OT cost, squared Euclidean).",
        "",
        "| energy | method | iters | seeds | \\|Δlog Ẑ\\| ours | paper | \\|Δlog Ẑ_RW\\| ours | paper | W2 ours | paper | Welch p (Δ, Δ_RW, W2) | s/run (train + eval) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = [f"{m['paper'][0]} ± {m['paper'][1]}" if m["paper"] else "–" for m in (r[k] for k in METRICS)]
        ps = ", ".join("–" if r[k]["welch_p"] is None else f"{r[k]['welch_p']:.2g}" for k in METRICS)
        lines.append(
            f"| {r['energy']} | {r['method']} | {r['iterations']} | {r['seeds']} | {_cell(r[METRICS[0]])} | {paper[0]} | "
            f"{_cell(r[METRICS[1]])} | {paper[1]} | {_cell(r[METRICS[2]], 2)} | {paper[2]} | {ps} | "
            f"{r['train_seconds_mean']:.0f} + {r['eval_seconds_mean']:.0f} |"
        )
    trained = [r for r in rows if any(r["overrides"])]  # a row whose seeds differ lists each set, "none" too
    if trained:
        lines += ["", "Trained with overrides beyond the experiments' configs (the arguments after `--`):", ""]
        lines += [f"- {r['energy']} {r['method']}: " + (f"`{o}`" if o else "none") for r in trained for o in r["overrides"]]
    if references:
        lines += [
            "",
            f"W2 reference rows at n = {args.eval_n} (mixlab.samplers.metrics.reference_rows_for, {args.reference_seeds} seeds): "
            "what exact samples score, and what a sampler that drops modes scores.",
            "",
        ]
    for energy, refs in references.items():
        for ref in refs:
            lines.append(f"- {energy}, {ref['name']}: W2 = {ref['mean']:.3f} ± {ref['std']:.3f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="python -m tools.samplers.table", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..SEEDS-1 per row (default: %(default)s)")
    parser.add_argument(
        "--iters", type=lambda s: int(s) if s else None, default=None, help="iterations per run (default: as configured)"
    )
    parser.add_argument("--eval-every", type=int, default=100, help="with --iters: iterations per epoch / validation")
    parser.add_argument(
        "--eval-n", type=int, default=2000, help="trajectories and exact samples in each final evaluation (default: %(default)s)"
    )
    parser.add_argument(
        "--reference-seeds",
        type=int,
        default=5,
        help="seeds of the W2 reference rows (exact vs exact); 0 leaves them out (default: %(default)s)",
    )
    parser.add_argument(
        "--experiments", default=",".join(TABLE_ROWS), help="comma-separated experiment names (default: the seven Table 1 rows)"
    )
    parser.add_argument("--out", default=None, help="default: logs/table_samplers/<time>")
    parser.add_argument("--finished-only", action="store_true", help="train nothing: tabulate the finished runs in --out")
    parser.add_argument("--seed", type=int, default=None, help="train only this seed of each row, no table (needs --out)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        print("error: SEEDS: must be >= 1", file=sys.stderr)
        return 2
    if args.finished_only and not args.out:
        print("error: --finished-only needs --out (the table directory whose runs to tabulate)", file=sys.stderr)
        return 2
    if args.seed is not None and (args.seed < 0 or not args.out or args.finished_only):
        print(
            "error: --seed needs a seed >= 0 and --out (the table directory to add the run to), not --finished-only",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out) if args.out else ROOT / "logs" / "table_samplers" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    host = device_description()
    rows, energies = [], {}
    for experiment in [e for e in args.experiments.split(",") if e]:
        runs = []
        for seed in [args.seed] if args.seed is not None else range(args.seeds):
            if args.finished_only:
                done = finished_run(experiment, seed, out, args.eval_n)
                if done is None:
                    print(f"[mixlab] {experiment} seed {seed}: not finished in {out / 'runs'}, left out", flush=True)
                    continue
                runs.append({"host": host, **done})  # runs timed before hosts were recorded: this machine
                continue
            print(f"[mixlab] {experiment} seed {seed} -> {out / 'runs'}", flush=True)
            runs.append({"host": host, **run_one(experiment, seed, out, args.iters, args.eval_every, args.eval_n, extra)})
        if not runs or args.seed is not None:
            continue
        rows.append(summarise(experiment, runs))
        energies.setdefault(paper_row(experiment)[0], runs[0]["ckpt"])
    if args.seed is not None:
        print(
            f"[mixlab] seed {args.seed} done; tabulate with: python -m tools.samplers.table --out {out} --seeds S --finished-only"
        )
        return 0
    if not rows:
        print(f"error: no finished runs in {out / 'runs'} (run the table without --finished-only first)", file=sys.stderr)
        return 2
    references = {}
    if args.reference_seeds:
        from mixlab.core.checkpoint import load_system
        from mixlab.samplers.metrics import reference_rows_for

        for energy, ckpt in energies.items():
            system = load_system(ckpt)[0]
            references[energy] = [
                {"name": r.name, "mean": r.mean, "std": r.std, "values": r.values}
                for r in reference_rows_for(system.energy, args.eval_n, range(args.reference_seeds))
            ]
    (out / "table.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "reference_w2": references,
                "device": host,
                "seeds": args.seeds,
                "iters": args.iters,
                "eval_n": args.eval_n,
                "train_args": extra,
                "finished_only": args.finished_only,
            },
            indent=2,
        )
    )
    (out / "table.md").write_text(markdown(rows, references, args))
    print((out / "table.md").read_text())
    curves = plot_table_curves(out, [r["experiment"] for r in rows])
    print(f"[mixlab] table: {out / 'table.md'} (+ table.json" + (f", validation curves {curves.name})" if curves else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
