"""The `mcl` evaluator: FID / P / R of an MCL checkpoint through a routing strategy.

`make eval ckpt=PATH strategy=gated gate_ckpt=GATE` scores one strategy; `strategy=all`
(`make eval-mcl`) scores every strategy that applies (and optionally a baseline checkpoint) on
the same real features and initial noise and writes strategy_comparison.md / .json / .png next
to the checkpoint (eval/ dir). A gate checkpoint (experiment=mcl_k4_gate) is evaluated as its
experts with the gate attached.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from mixlab.core.checkpoint import load_system  # noqa: E402
from mixlab.core.config import build, require  # noqa: E402
from mixlab.core.errors import ArgumentError, ConfigError  # noqa: E402
from mixlab.core.evaluate import out_dir_of, resolve_device  # noqa: E402
from mixlab.mcl.gate import MCLGate  # noqa: E402
from mixlab.mcl.routing import Routing  # noqa: E402
from mixlab.mcl.system import MCLDiffusion  # noqa: E402
from mixlab.score.evaluate import Scorer, print_report, sample_and_score, validate  # noqa: E402


def load_bank(cfg: DictConfig, device: torch.device) -> tuple[MCLDiffusion, DictConfig, dict]:
    """(MCL system, its run config, the checkpoint), with a gate attached when `cfg.ckpt` is a
    gate checkpoint or `gate_ckpt=` names one."""
    system, run_cfg, ckpt = load_system(cfg.ckpt, device)
    if isinstance(system, MCLGate):
        system = system.attach()
        run_cfg = OmegaConf.create(system.run_config)
    require(isinstance(system, MCLDiffusion), "ckpt", f"{cfg.ckpt} is a {type(system).__name__} checkpoint, not an MCL one")
    if cfg.get("gate_ckpt"):
        gate, _, _ = load_system(cfg.gate_ckpt, device, key="gate_ckpt")
        require(isinstance(gate, MCLGate), "gate_ckpt", f"{cfg.gate_ckpt} is not a gate checkpoint (experiment=mcl_k4_gate)")
        require(
            gate.gate.num_experts == system.num_experts,
            "gate_ckpt",
            f"the gate routes {gate.gate.num_experts} experts but the model has {system.num_experts}",
        )
        system.gate = gate.gate.eval()
    return system, run_cfg, ckpt


def applicable_strategies(system: MCLDiffusion) -> list[tuple[str, dict]]:
    """(strategy, kwargs) pairs this checkpoint supports: every single expert, random per batch and
    per sample, best, mixture, committed_usage; gated/sticky/committed with a gate or scoring heads."""
    plan = [("single_expert", {"expert": k}) for k in range(system.num_experts)]
    plan += [
        ("random_expert", {"per": "batch"}),
        ("random_expert", {"per": "sample"}),
        ("best_expert", {}),
        ("mixture_score", {}),
        ("committed_usage", {}),
    ]
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


def check_strategy(cfg: DictConfig, strategy: str, key: str = "strategy") -> None:
    require(strategy in cfg.routings, key, f"unknown value '{strategy}' (choose {'|'.join(cfg.routings)})")


def routing_of(cfg: DictConfig, strategy: str, seed: int, **kwargs) -> Routing:
    """The routing `strategy=NAME` names (`routings.NAME` of the evaluator's config, filled in
    by `expert=` / `per=`; `kwargs` override them). A bad argument names the option (`per: ...`)."""
    check_strategy(cfg, strategy)
    return build(cfg.routings[strategy], key="", seed=seed, **kwargs)


def score_routing(cfg, system, ckpt, scorer, device, routing: Routing, name: str, out_dir: Path | None = None) -> dict:
    fields = {"label": name, "strategy": routing.name, "expert": getattr(routing, "expert", None)}
    try:
        return sample_and_score(
            cfg, system, ckpt, scorer, device, {"routing": routing}, tag=routing.tag, fields=fields, out_dir=out_dir
        )
    except ArgumentError as err:  # the routing's arguments are this evaluator's options (expert=, per=)
        raise ConfigError(err.arg, err.problem) from None


def evaluate(cfg: DictConfig) -> dict | list[dict]:
    validate(cfg)
    if cfg.strategy not in (None, "", "all"):
        check_strategy(cfg, cfg.strategy)
    device = resolve_device(cfg.device)
    system, run_cfg, ckpt = load_bank(cfg, device)
    if cfg.strategy == "all":
        return compare(cfg, system, run_cfg, ckpt, device)
    routing = routing_of(cfg, cfg.strategy, seed=cfg.routing_seed) if cfg.strategy else system.routing
    result = score_routing(cfg, system, ckpt, Scorer(cfg, run_cfg, device), device, routing, f"{routing.name} routing")
    print_report(result)
    return result


def compare(cfg: DictConfig, system: MCLDiffusion, run_cfg: DictConfig, ckpt: dict, device: torch.device) -> list[dict]:
    """Every applicable strategy (or `strategies=[...]`), plus `baseline_ckpt` first if given."""
    plan = applicable_strategies(system)
    if cfg.get("strategies"):
        for s in cfg.strategies:
            check_strategy(cfg, s, "strategies")
        plan = [(s, kw) for s, kw in plan if s in cfg.strategies]
    scorer, out_dir = Scorer(cfg, run_cfg, device), out_dir_of(cfg)
    rows = []
    if cfg.get("baseline_ckpt"):
        baseline, _, base_ckpt = load_system(cfg.baseline_ckpt, device, key="baseline_ckpt")
        rows.append(
            {**sample_and_score(cfg, baseline, base_ckpt, scorer, device, out_dir=out_dir / "baseline"), "label": "baseline"}
        )
        print(f"[mixlab] baseline: FID {rows[-1][cfg.protocols[0]]['fid']:.2f}")
    for strategy, kwargs in plan:
        routing = routing_of(cfg, strategy, seed=cfg.routing_seed, **kwargs)
        rows.append(score_routing(cfg, system, ckpt, scorer, device, routing, label(strategy, kwargs), out_dir))
        print(f"[mixlab] {rows[-1]['label']}: FID {rows[-1][cfg.protocols[0]]['fid']:.2f} ({rows[-1]['sampling_seconds']} s)")
    write_table(rows, cfg, out_dir, usage=system.usage_shares.tolist())
    return rows


def write_table(rows: list[dict], cfg: DictConfig, out_dir: Path, usage: list[float]) -> None:
    tag = f"{cfg.solver}_{cfg.grid}{cfg.steps}_n{cfg.n}_seed{cfg.seed}"
    protocols = list(cfg.protocols)
    header = "| strategy | " + " | ".join(f"{p} FID | {p} P | {p} R" for p in protocols) + " | sampling s |"
    lines = [
        f"MCL strategies of `{cfg.ckpt}`: {cfg.n} samples, {cfg.solver} {cfg.grid} {cfg.steps} steps, seed {cfg.seed}; "
        f"training usage {', '.join(f'{100 * u:.0f}%' for u in usage)}",
        "",
        header,
        "|" + "---|" * (2 + 3 * len(protocols)),
    ]
    for r in rows:
        cells = " | ".join(f"{r[p]['fid']:.2f} | {r[p]['precision']:.3f} | {r[p]['recall']:.3f}" for p in protocols)
        lines.append(f"| {r['label']} | {cells} | {r['sampling_seconds']} |")
    (out_dir / f"strategy_comparison_{tag}.md").write_text("\n".join(lines) + "\n")
    from mixlab.core.checkpoint_io import write_json_atomic

    write_json_atomic(out_dir / f"strategy_comparison_{tag}.json", rows)
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
    ax.set_xticks(
        [i + width * (len(protocols) - 1) / 2 for i in range(n)], [r["label"] for r in rows], rotation=30, ha="right", fontsize=7
    )
    ax.set_yscale("log")
    ax.set_ylabel("FID (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
