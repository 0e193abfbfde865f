"""Validation curves of sampler runs (what `make table-samplers` draws beside table.md): every
run's `val/*` metrics from its CSV logs (all versions: a resumed run logs into a new one; the last
value per step wins), one panel per metric against the iteration, one colour per experiment
(one line per seed), the paper's mean as a dashed line.

    python -m tools.samplers.curves <table dir> [--out curves.png]
    python -m tools.samplers.curves --runs LABEL=RUN_DIR[,RUN_DIR...] ... [--metrics val/w2,val/shallow_share]
        [--hline val/w2=5.33 ...] --out x.png

The second form compares any runs (e.g. one experiment under different overrides), one colour per
label, one line per run directory.
"""

import argparse
import csv
import math
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tools.samplers.paper import TABLE_ROWS, paper_row  # noqa: E402

# (column in metrics.csv, panel title, index of the paper's value in paper_row(exp)[2:]); panels show |value|
PANELS = (("val/delta_log_z", "|Δlog Ẑ|", 0), ("val/delta_log_z_rw", "|Δlog Ẑ_RW|", 1), ("val/w2", "W2", 2))


def validation_curves(run_dir: Path) -> dict[str, np.ndarray]:
    """{metric: [[step, value], ...]} from <run_dir>/csv/version_*/metrics.csv, sorted by step."""
    by_metric: dict[str, dict[int, float]] = {}
    versions = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in versions:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key.startswith("val/") and value not in ("", None) and row.get("step"):
                        # logged at global_step - 1 after an epoch of iterations: +1 = iterations done
                        by_metric.setdefault(key, {})[int(float(row["step"])) + 1] = float(value)
    return {k: np.array(sorted(v.items()), dtype=float) for k, v in by_metric.items()}


def plot_table_curves(out: Path, experiments: list[str], path: Path | None = None) -> Path | None:
    """One figure of the runs under <out>/runs/<experiment>_seed<s>/; None when no run has logged a validation."""
    path = path or out / "curves.png"
    runs = {e: sorted((out / "runs").glob(f"{e}_seed*")) for e in experiments}
    curves = {e: [validation_curves(r) for r in rs] for e, rs in runs.items()}
    energies = list(dict.fromkeys(paper_row(e)[0] for e in experiments))
    if not any(c for cs in curves.values() for c in cs):
        return None
    fig, axes = plt.subplots(len(energies), len(PANELS), figsize=(5 * len(PANELS), 3.6 * len(energies)), squeeze=False)
    for k, experiment in enumerate(experiments):
        energy, method, *paper = paper_row(experiment)
        colour = f"C{k % 10}"
        for j, (key, title, p) in enumerate(PANELS):
            ax = axes[energies.index(energy), j]
            for s, c in enumerate(curves[experiment]):
                if key in c:
                    ax.plot(c[key][:, 0], np.abs(c[key][:, 1]), color=colour, lw=1, alpha=0.85, label=method if s == 0 else None)
            if paper[p] is not None:
                ax.axhline(paper[p][0], color=colour, ls="--", lw=0.9)
            ax.set(title=f"{energy}: {title}", xlabel="iteration", yscale="log")
            ax.grid(alpha=0.3, which="both")
    for ax in axes[:, 0]:
        ax.legend(fontsize=8)
    fig.suptitle("validation on 2,000 trajectories (solid: ours, one line per seed; dashed: the paper's mean, Table 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run_comparison(
    runs: dict[str, list[Path]], metrics: list[str], path: Path, hlines: dict[str, float] | None = None
) -> Path | None:
    """One panel per metric (as logged, linear scale), one colour per label, `hlines` {metric: value}
    dashed (e.g. the paper's value); None when nothing was logged."""
    curves = {label: [validation_curves(d) for d in dirs] for label, dirs in runs.items()}
    if not any(m in c for cs in curves.values() for c in cs for m in metrics):
        return None
    legend_rows = math.ceil(len(curves) / 3)  # the run legend goes below the panels, 3 labels a row
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6 + 0.25 * legend_rows), squeeze=False)
    marks, lines = {}, {}
    for k, (label, cs) in enumerate(curves.items()):
        for ax, key in zip(axes[0], metrics):
            for c in cs:
                if key in c:
                    lines[label] = ax.plot(c[key][:, 0], c[key][:, 1], color=f"C{k % 10}", lw=1, alpha=0.85)[0]
            if key in (hlines or {}) and k == 0:
                marks[key] = ax.axhline(hlines[key], color="k", ls="--", lw=0.9, label=f"{hlines[key]:g}")
            ax.set(title=key, xlabel="iteration")
            ax.grid(alpha=0.3)
    for ax, key in zip(axes[0], metrics):
        if key in marks:
            ax.legend(handles=[marks[key]], fontsize=8)
    fig.legend(list(lines.values()), list(lines), loc="lower center", ncol=min(3, len(lines)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.25 * legend_rows / (3.6 + 0.25 * legend_rows) + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _hline(spec: str) -> tuple[str, float]:
    key, sep, value = spec.partition("=")
    try:
        return key, float(value) if sep and key else float("x")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METRIC=VALUE, got {spec!r}") from None


def _label_dirs(spec: str) -> tuple[str, list[Path]]:
    label, sep, dirs = spec.partition("=")
    if not sep or not label or not dirs:
        raise argparse.ArgumentTypeError(f"expected LABEL=RUN_DIR[,RUN_DIR...], got {spec!r}")
    return label, [Path(d) for d in dirs.split(",") if d]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.samplers.curves", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("table_dir", type=Path, nargs="?", help="a make table-samplers output directory")
    parser.add_argument(
        "--experiments",
        default=",".join(TABLE_ROWS),
        help="with a table directory: comma-separated experiments (default: the seven Table 1 rows)",
    )
    parser.add_argument("--runs", type=_label_dirs, nargs="+", default=None, help="LABEL=RUN_DIR[,RUN_DIR...] to compare")
    parser.add_argument("--metrics", default="val/w2,val/delta_log_z", help="with --runs: comma-separated val/* columns")
    parser.add_argument("--hline", type=_hline, nargs="*", default=[], help="with --runs: METRIC=VALUE drawn dashed")
    parser.add_argument(
        "--out", type=Path, default=None, help="the PNG to write (default: <table dir>/curves.png; needed with --runs)"
    )
    args = parser.parse_args(argv)
    if (args.table_dir is None) == (args.runs is None):
        parser.error("give a table directory or --runs, not both")
    if args.runs is not None:
        if args.out is None:
            parser.error("--runs needs --out")
        path = plot_run_comparison(dict(args.runs), [m for m in args.metrics.split(",") if m], args.out, dict(args.hline))
        if path is None:
            print(
                f"error: none of {args.metrics} logged under the --runs directories (csv/version_*/metrics.csv)", file=sys.stderr
            )
            return 2
        print(f"[mixlab] curves: {path}")
        return 0
    present = [e for e in args.experiments.split(",") if e and any((args.table_dir / "runs").glob(f"{e}_seed*"))]
    path = plot_table_curves(args.table_dir, present, args.out)
    if path is None:
        print(
            f"error: no validation metrics under {args.table_dir / 'runs'} (<experiment>_seed<s>/csv/version_*/metrics.csv)",
            file=sys.stderr,
        )
        return 2
    print(f"[mixlab] curves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
