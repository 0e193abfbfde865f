"""The `mcl_analysis` evaluator, `make analyze ckpt=PATH` (python evaluate.py ckpt=PATH
evaluator=mcl_analysis): the seed's MCL analysis figures from one checkpoint.

expert_vs_digit, expert_vs_sigma (who wins the DSM loss, by test digit and by noise level),
multi_expert_grid (each expert alone from the same noise), trajectory (the default routing's
denoising path), strategy_comparison (a grid per routing, same noise), expert_usage_training
and training_curves (from the checkpoint's ExpertUsage / MetricHistory state), plus
analysis.json with the numbers behind the first two.
"""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from mixlab.callbacks.plots import plot_usage_history  # noqa: E402
from mixlab.core.evaluate import resolve_device  # noqa: E402
from mixlab.core.validate import PositiveInt, check_value  # noqa: E402
from mixlab.data.mnist import to_model_range  # noqa: E402
from mixlab.data.sources import load_split  # noqa: E402
from mixlab.mcl.evaluate import applicable_strategies, label, load_bank, routing_of  # noqa: E402
from mixlab.mcl.routing import SingleExpert  # noqa: E402
from mixlab.score.evaluate import sampling_of  # noqa: E402


# ----- statistics (pure) -------------------------------------------------------------------
def win_fractions_by_group(winners: np.ndarray, groups: np.ndarray, num_experts: int, num_groups: int) -> np.ndarray:
    """[K, G]: share of each group's samples that expert k won (each non-empty column sums to 1)."""
    counts = np.zeros((num_experts, num_groups))
    np.add.at(counts, (winners, groups), 1)
    totals = counts.sum(0, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


@torch.no_grad()
def winners_on_test(system, images: torch.Tensor, sigma: torch.Tensor, seed: int, batch: int = 256) -> torch.Tensor:
    """argmin_k DSM loss of the (EMA, eval-mode) experts for each (image, sigma) pair."""
    gen = torch.Generator(device=system.device).manual_seed(seed)
    out = []
    for i in range(0, len(images), batch):
        x0, s = images[i : i + batch].to(system.device), sigma[i : i + batch].to(system.device)
        noise = torch.randn(x0.shape, generator=gen, device=system.device)
        out.append(system.loss_matrix(x0, s, noise).argmin(1).cpu())
    return torch.cat(out)


# ----- figures -----------------------------------------------------------------------------
def _heatmap(matrix: np.ndarray, path: Path, xlabels, title: str, xlabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(1 + 0.6 * matrix.shape[1], 1 + 0.55 * matrix.shape[0]))
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (k, g), v in np.ndenumerate(matrix):
        ax.text(g, k, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set(xticks=range(matrix.shape[1]), yticks=range(matrix.shape[0]), xlabel=xlabel, ylabel="expert", title=title)
    ax.set_xticklabels(xlabels, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04, label="win fraction")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _expert_vs_sigma(fractions: np.ndarray, centers: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.stackplot(centers, fractions, labels=[f"expert {k}" for k in range(len(fractions))], alpha=0.85)
    ax.set(
        xscale="log", xlabel="sigma", ylabel="win fraction", ylim=(0, 1), title="Which expert wins the DSM loss, by noise level"
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _image_rows(
    rows: list[torch.Tensor], row_labels: list[str], path: Path, col_labels: list[str] | None = None, title: str = ""
) -> Path:
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * rows[0].shape[0] + 1.5, 1.25 * len(rows) + 0.5), squeeze=False)
    for ax, images, text in zip(axes[:, 0], rows, row_labels):
        ax.imshow(make_grid((images + 1) / 2, nrow=len(images), padding=2, pad_value=1).permute(1, 2, 0).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8)
    if col_labels:
        width = rows[0].shape[-1] + 2
        axes[0, 0].set_xticks([width * (i + 0.5) for i in range(len(col_labels))], col_labels, fontsize=7)
        axes[0, 0].xaxis.tick_top()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def trajectory(
    system, routing, n: int, steps: int, grid, seed: int, snapshots: int = 10
) -> tuple[list[torch.Tensor], list[float]]:
    """Euler along the sampling grid; the denoised estimate x - sigma * eps at `snapshots` steps."""
    sigmas = system.sigmas(steps, grid).to(system.device)
    gen = torch.Generator(device=system.device).manual_seed(seed)
    x = sigmas[0] * torch.randn((n, *system.image_shape), generator=gen, device=system.device)
    eps_fn = system.eps_function(n, routing)
    keep = set(np.linspace(0, len(sigmas) - 2, snapshots).round().astype(int).tolist())
    frames, labels = [], []
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        eps = eps_fn(x, s.expand(n))
        if i in keep:
            frames.append((x - s * eps).clamp(-1, 1).cpu())
            labels.append(float(s))
        x = x + (s_next - s) * eps
    return frames, labels


def _training_curves(history: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    epochs = [r["epoch"] + 1 for r in history]
    for key, style in (("train/loss", "-"), ("val/loss", "--")):
        pts = [(e, r[key]) for e, r in zip(epochs, history) if key in r]
        if pts:
            ax.plot(*zip(*pts), style, color="black", lw=2, label=f"{key} (min over experts)")
    k = 0
    while any(f"train/expert_{k}_loss" in r for r in history):
        pts = [(e, r[f"train/expert_{k}_loss"]) for e, r in zip(epochs, history) if f"train/expert_{k}_loss" in r]
        ax.plot(*zip(*pts), lw=1, label=f"expert {k} (weighted)")
        k += 1
    ax.set(xlabel="epoch", ylabel="DSM loss", title="Training curves")
    temps = [(e, r["temperature"]) for e, r in zip(epochs, history) if "temperature" in r]
    if temps:
        ax2 = ax.twinx()
        ax2.plot(*zip(*temps), ":", color="grey", label="temperature")
        ax2.set(yscale="log", ylabel="temperature")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----- the command -------------------------------------------------------------------------
def analyze(cfg: DictConfig) -> dict:
    for key in ("n", "steps", "num_eval_samples"):
        check_value(cfg[key], PositiveInt, key)
    sampling = sampling_of(cfg)
    device = resolve_device(cfg.device)
    system, run_cfg, ckpt = load_bank(cfg, device)
    out = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.ckpt).resolve().parent.parent / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    K, written = system.num_experts, {}

    images, labels = load_split(Path(cfg.paths.data_dir), run_cfg.data.dataset, "test")
    images, labels = to_model_range(images[: cfg.num_eval_samples]), np.asarray(labels[: cfg.num_eval_samples]).astype(int)
    gen = torch.Generator().manual_seed(cfg.seed)
    log_min, log_max = math.log(system.sigma_min), math.log(system.sigma_max)
    sigma = torch.exp(log_min + (log_max - log_min) * torch.rand(len(images), generator=gen))
    by_digit = win_fractions_by_group(winners_on_test(system, images, sigma, cfg.seed).numpy(), labels, K, 10)
    written["expert_vs_digit"] = _heatmap(
        by_digit,
        out / "expert_vs_digit.png",
        [str(d) for d in range(10)],
        "Share of each digit's samples won by each expert (sigma log-uniform)",
        "digit",
    )
    bins = 20
    grid_sigma = torch.exp(torch.linspace(log_min, log_max, bins)).repeat_interleave(math.ceil(len(images) / bins))[: len(images)]
    bin_idx = np.repeat(np.arange(bins), math.ceil(len(images) / bins))[: len(images)]
    by_sigma = win_fractions_by_group(winners_on_test(system, images, grid_sigma, cfg.seed + 1).numpy(), bin_idx, K, bins)
    written["expert_vs_sigma"] = _expert_vs_sigma(
        by_sigma, np.exp(np.linspace(log_min, log_max, bins)), out / "expert_vs_sigma.png"
    )

    def draw(routing, bank=system):
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        return bank.sample(cfg.n, **sampling.options(), generator=g, **({"routing": routing} if routing else {}))

    usage = system.usage_shares.tolist()
    written["multi_expert_grid"] = _image_rows(
        [draw(SingleExpert(k)) for k in range(K)],
        [f"expert {k}\n({100 * usage[k]:.0f}% won)" for k in range(K)],
        out / "multi_expert_grid.png",
        title="Each expert alone, same initial noise",
    )
    path_routing = (
        routing_of(cfg, "gated", seed=cfg.seed) if system.gate is not None else system.routing
    )  # the gate when there is one
    frames, sig = trajectory(system, path_routing, min(cfg.n, 6), sampling.steps, sampling.grid, cfg.seed)
    per_sample = [torch.stack([f[i] for f in frames]) for i in range(frames[0].shape[0])]
    written["trajectory"] = _image_rows(
        per_sample,
        [f"sample {i}" for i in range(len(per_sample))],
        out / "trajectory.png",
        [f"σ={s:.2g}" for s in sig],
        f"Denoised estimate along the ODE ({path_routing.name} routing)",
    )
    rows, names = [], []
    if cfg.get("baseline_ckpt"):
        from mixlab.core.checkpoint import load_system

        rows.append(draw(None, load_system(cfg.baseline_ckpt, device, key="baseline_ckpt")[0]))
        names.append("baseline")
    for strategy, kwargs in applicable_strategies(system):
        if strategy != "single_expert":
            rows.append(draw(routing_of(cfg, strategy, seed=cfg.seed, **kwargs)))
            names.append(label(strategy, kwargs))
    written["strategy_comparison"] = _image_rows(
        rows, names, out / "strategy_comparison.png", title="Routing strategies, same initial noise"
    )
    callbacks = ckpt.get("callbacks", {})
    usage_hist = next((s["history"] for key, s in callbacks.items() if key.startswith("ExpertUsage")), [])
    metric_hist = next((s["history"] for key, s in callbacks.items() if key.startswith("MetricHistory")), [])
    if usage_hist:
        written["expert_usage_training"] = plot_usage_history(usage_hist, out / "expert_usage_training.png")
    if metric_hist:
        written["training_curves"] = _training_curves(metric_hist, out / "training_curves.png")
    stats = {
        "ckpt": str(cfg.ckpt),
        "num_experts": K,
        "usage": usage,
        "expert_vs_digit": by_digit.tolist(),
        "expert_vs_sigma": {
            "sigma_centers": np.exp(np.linspace(log_min, log_max, bins)).tolist(),
            "fractions": by_sigma.tolist(),
        },
        "figures": {k: str(v) for k, v in written.items()},
    }
    (out / "analysis.json").write_text(json.dumps(stats, indent=2))
    for name, path in written.items():
        print(f"[mixlab] {name:<22} {path}")
    return stats
