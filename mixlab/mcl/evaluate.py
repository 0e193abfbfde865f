"""`make eval-mcl ckpt=PATH [gate_ckpt=PATH baseline_ckpt=PATH]`: every routing strategy of an MCL
checkpoint (and optionally a baseline) scored on the same real features and initial noise; writes
strategy_comparison.md / .json / .png next to the checkpoint (eval/ dir)."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mixlab.core.config import check_choice, require  # noqa: E402
from mixlab.score.evaluate import Scorer, load_for_eval, resolve_device, sample_and_score, validate_eval  # noqa: E402
from mixlab.mcl.routing import STRATEGIES, build_routing  # noqa: E402
from mixlab.core.checkpoint import load_system  # noqa: E402


def applicable_strategies(system) -> list[tuple[str, dict]]:
    """(strategy, kwargs) pairs this checkpoint supports: every single expert, random per batch and
    per sample, best, mixture, committed_usage; gated/sticky/committed with a gate or scoring heads."""
    plan = [("single_expert", {"expert": k}) for k in range(system.num_experts)]
    plan += [("random_expert", {"per": "batch"}), ("random_expert", {"per": "sample"}), ("best_expert", {}),
             ("mixture_score", {}), ("committed_usage", {})]
    if system.gate is not None:
        plan += [("gated", {}), ("sticky_gate", {}), ("committed_gate", {})]
    if system.scorer is not None:
        plan += [("scored", {}), ("sticky_scores", {}), ("committed_scores", {})]
    return plan


def label(strategy: str, kwargs: dict) -> str:
    if strategy == "single_expert":
        return f"single_expert {kwargs['expert']}"
    if strategy == "random_expert":
        return f"random_expert ({kwargs['per']})"
    return strategy


def evaluate_mcl(cfg: DictConfig) -> list[dict]:
    validate_eval(cfg)
    device = resolve_device(cfg.device)
    system, run_cfg, ckpt = load_for_eval(cfg, device)
    require(hasattr(system, "num_experts"), "ckpt", f"{cfg.ckpt} is not an MCL checkpoint; use make eval")
    plan = applicable_strategies(system)
    if cfg.get("strategies"):
        for s in cfg.strategies:
            check_choice(s, list(STRATEGIES), "strategies")
        plan = [(s, kw) for s, kw in plan if s in cfg.strategies]
    scorer = Scorer(cfg, run_cfg, device)
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.ckpt).resolve().parent.parent / "eval"
    rows = []
    if cfg.get("baseline_ckpt"):
        baseline, _, base_ckpt = load_system(cfg.baseline_ckpt, device, key="baseline_ckpt")
        rows.append({"label": "baseline", **sample_and_score(cfg, baseline, base_ckpt, scorer, device, None, out_dir / "baseline")})
        print(f"[mixlab] baseline: FID {rows[-1][cfg.protocols[0]]['fid']:.2f}")
    for strategy, kwargs in plan:
        routing = build_routing(strategy, seed=cfg.routing_seed, **kwargs)
        rows.append({"label": label(strategy, kwargs), **sample_and_score(cfg, system, ckpt, scorer, device, routing, out_dir)})
        print(f"[mixlab] {rows[-1]['label']}: FID {rows[-1][cfg.protocols[0]]['fid']:.2f} ({rows[-1]['sampling_seconds']} s)")
    write_table(rows, cfg, out_dir, usage=system.usage_shares.tolist())
    return rows


def write_table(rows: list[dict], cfg: DictConfig, out_dir: Path, usage: list[float]) -> None:
    tag = f"{cfg.solver}_{cfg.grid}{cfg.steps}_n{cfg.n}_seed{cfg.seed}"
    protocols = [p for p in cfg.protocols]
    header = "| strategy | " + " | ".join(f"{p} FID | {p} P | {p} R" for p in protocols) + " | sampling s |"
    lines = [f"MCL strategies of `{cfg.ckpt}`: {cfg.n} samples, {cfg.solver} {cfg.grid} {cfg.steps} steps, seed {cfg.seed}; "
             f"training usage {', '.join(f'{100 * u:.0f}%' for u in usage)}", "", header,
             "|" + "---|" * (2 + 3 * len(protocols))]
    for r in rows:
        cells = " | ".join(f"{r[p]['fid']:.2f} | {r[p]['precision']:.3f} | {r[p]['recall']:.3f}" for p in protocols)
        lines.append(f"| {r['label']} | {cells} | {r['sampling_seconds']} |")
    (out_dir / f"strategy_comparison_{tag}.md").write_text("\n".join(lines) + "\n")
    (out_dir / f"strategy_comparison_{tag}.json").write_text(json.dumps(rows, indent=2))
    plot_comparison(rows, protocols, out_dir / f"strategy_comparison_{tag}.png")
    print("\n".join(lines))
    print(f"[mixlab] table:  {out_dir / f'strategy_comparison_{tag}.md'}")
    print(f"[mixlab] figure: {out_dir / f'strategy_comparison_{tag}.png'}")


def plot_comparison(rows: list[dict], protocols: list[str], path: Path) -> None:
    """Top: a sample grid per strategy; bottom: FID per strategy and protocol (log scale)."""
    from PIL import Image

    n = len(rows)
    fig = plt.figure(figsize=(max(8, 1.9 * n), 6.2))
    grid = fig.add_gridspec(2, n, height_ratios=[1, 1.1])
    for i, r in enumerate(rows):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(Image.open(r["sample_grid"]), cmap="gray")
        ax.set_title(f"{r['label']}\nFID {r[protocols[0]]['fid']:.1f}", fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    width = 0.8 / len(protocols)
    for j, p in enumerate(protocols):
        ax.bar([i + j * width for i in range(n)], [max(r[p]["fid"], 1e-3) for r in rows], width, label=f"{p} FID")
    ax.set_xticks([i + width * (len(protocols) - 1) / 2 for i in range(n)], [r["label"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("FID (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    from mixlab.core.cli import hydra_entry

    hydra_entry("eval", lambda: evaluate_mcl)


if __name__ == "__main__":
    main()
