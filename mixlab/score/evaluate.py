"""Sample from a checkpoint (EMA weights) and score the samples: `python evaluate.py ckpt=...`.

Two protocols, both computed by torch-fidelity on features of a frozen network:
- inception:  FID / P / R (k=3) on Inception pool3 features (the standard FID network);
- classifier: the seed's protocol, 128-d features of a small MNIST classifier, P / R with k=5.
The real set is the first n images of the test split (file order), as in the seed.
"""

import json
import time
from pathlib import Path

import torch

from omegaconf import DictConfig, OmegaConf

from mixlab.callbacks.sampling import save_grid
from mixlab.core.config import build, check_choice, check_positive_int, check_sampler, require
from mixlab.score.solvers import num_evaluations
from mixlab.core.errors import ConfigError
from mixlab.metrics.fidelity import PROTOCOLS, ClassifierFeatures, InceptionFeatures, cached_features, fidelity_metrics
from mixlab.core.checkpoint import load_system


def feature_extractor(protocol: str, cfg: DictConfig, dataset: str, device: torch.device):
    weights = Path(cfg.paths.weights_dir)
    if protocol == "inception":
        from mixlab.metrics.inception import ensure_inception_weights

        return InceptionFeatures(ensure_inception_weights(weights), device=str(device))
    from mixlab.metrics.classifier import load_classifier

    model = load_classifier(weights / f"{dataset}_lenet.pt", device=str(device), dataset=dataset)
    return ClassifierFeatures(model, device=str(device))


def validate_eval(cfg: DictConfig) -> None:
    require(not OmegaConf.is_missing(cfg, "ckpt") and cfg.ckpt, "ckpt", "give the checkpoint to evaluate: ckpt=PATH")
    check_positive_int(cfg.n, "n")
    check_positive_int(cfg.batch_size, "batch_size")
    check_sampler(cfg, "")
    for p in cfg.protocols:
        check_choice(p, list(PROTOCOLS), "protocols")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_for_eval(cfg: DictConfig, device: torch.device):
    """(system, run config, checkpoint). A gate checkpoint (experiment=mcl_k4_gate) evaluates
    its experts with the gate attached; `gate_ckpt=` attaches a gate to an MCL checkpoint."""
    from mixlab.mcl.gate import MCLGate

    system, run_cfg, ckpt = load_system(cfg.ckpt, device)
    if isinstance(system, MCLGate):
        system = system.attach()
        run_cfg = OmegaConf.create(system.run_config)
    if cfg.get("gate_ckpt"):
        gate, _, _ = load_system(cfg.gate_ckpt, device, key="gate_ckpt")
        require(isinstance(gate, MCLGate), "gate_ckpt", f"{cfg.gate_ckpt} is not a gate checkpoint (experiment=mcl_k4_gate)")
        require(hasattr(system, "num_experts"), "gate_ckpt", "the evaluated checkpoint is not an MCL model")
        require(gate.gate.num_experts == system.num_experts, "gate_ckpt",
                f"the gate routes {gate.gate.num_experts} experts but the model has {system.num_experts}")
        system.gate = gate.gate.eval()
    return system, run_cfg, ckpt


def routing_from_cfg(cfg: DictConfig, system):
    """None for single-model systems; the strategy's Routing for MCL (default: the model's own)."""
    strategy = cfg.get("strategy")
    if not hasattr(system, "num_experts"):
        require(strategy in (None, ""), "strategy", "routing strategies apply to MCL checkpoints only")
        return None
    if not strategy:
        return system.routing
    from mixlab.mcl.routing import build_routing

    return build_routing(strategy, expert=cfg.get("expert", 0), seed=cfg.get("routing_seed", 0), per=cfg.get("per", "batch"))


class Scorer:
    """Real-set features (cached on disk) and feature extractors, loaded once per evaluation."""

    def __init__(self, cfg: DictConfig, run_cfg: DictConfig, device: torch.device):
        if cfg.n < 2 * max(p["k"] for p in PROTOCOLS.values()):
            raise ConfigError("n", f"{cfg.n} samples is too few for precision/recall; use at least 16")
        self.cfg, self.dataset = cfg, run_cfg.data.dataset
        self.datamodule = build(run_cfg.data, root=cfg.paths.data_dir)
        real = self.datamodule.real_images(cfg.n, split="test")  # fails early (clear error) if data is missing
        self.extractors, self.real_feats = {}, {}
        for protocol in cfg.protocols:
            self.extractors[protocol] = extractor = feature_extractor(protocol, cfg, self.dataset, device)
            cache = Path(cfg.paths.data_dir) / "stats" / f"{self.dataset}_test_first{cfg.n}_{protocol}.npz"
            self.real_feats[protocol] = cached_features(extractor, lambda: real, cache, expected_count=cfg.n)

    def __call__(self, fake: torch.Tensor) -> dict:
        result = {}
        for protocol, extractor in self.extractors.items():
            k = PROTOCOLS[protocol]["k"]
            result[protocol] = fidelity_metrics(self.real_feats[protocol], extractor(fake), k=k, kid=self.cfg.kid)
            if self.cfg.real_reference:  # what a perfect model would score at this n: train vs test images
                train_real = self.datamodule.real_images(self.cfg.n, split="train")
                result[f"{protocol}_real_reference"] = fidelity_metrics(self.real_feats[protocol], extractor(train_real), k=k, kid=self.cfg.kid)
        return result


def sample_and_score(cfg: DictConfig, system, ckpt: dict, scorer: Scorer, device: torch.device, routing=None, out_dir: Path | None = None) -> dict:
    """Sample cfg.n images (same initial noise for every routing), score them, write JSON + grid."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    t0 = time.perf_counter()
    fake = system.sample(cfg.n, solver=cfg.solver, steps=cfg.steps, grid=cfg.grid, generator=gen, batch_size=cfg.batch_size,
                         **({"routing": routing} if routing is not None else {}))
    sample_s = time.perf_counter() - t0
    out_dir = out_dir or (Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.ckpt).resolve().parent.parent / "eval")
    strategy = f"{routing.tag}_" if routing is not None else ""
    tag = f"{strategy}{cfg.solver}_{cfg.grid}{cfg.steps}_n{cfg.n}_seed{cfg.seed}"
    grid_path = save_grid(fake[:64], out_dir / f"samples_{tag}.png")
    result = {
        "ckpt": str(Path(cfg.ckpt).resolve()), "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"),
        "dataset": scorer.dataset, "strategy": routing.name if routing is not None else None,
        "expert": getattr(routing, "expert", None), "n": cfg.n, "solver": cfg.solver, "grid": cfg.grid, "steps": cfg.steps,
        "nfe": num_evaluations(cfg.solver, cfg.steps), "seed": cfg.seed, "sampling_seconds": round(sample_s, 2),
        "device": str(device), "sample_grid": str(grid_path), **scorer(fake),
    }
    metrics_path = out_dir / f"metrics_{tag}.json"
    metrics_path.write_text(json.dumps(result, indent=2))
    result["metrics_json"] = str(metrics_path)
    return result


def evaluate(cfg: DictConfig) -> dict:
    validate_eval(cfg)
    device = resolve_device(cfg.device)
    system, run_cfg, ckpt = load_for_eval(cfg, device)
    routing = routing_from_cfg(cfg, system)
    result = sample_and_score(cfg, system, ckpt, Scorer(cfg, run_cfg, device), device, routing)
    print_report(result)
    return result


def print_report(result: dict) -> None:
    strategy = f"{result['strategy']} routing, " if result.get("strategy") else ""
    print(f"[mixlab] {strategy}{result['n']} samples, {result['solver']} {result['grid']} {result['steps']} steps "
          f"({result['nfe']} NFE, {result['sampling_seconds']} s on {result['device']})")
    for protocol in PROTOCOLS:
        if protocol in result:
            m = result[protocol]
            print(f"[mixlab] {protocol:>10}: FID {m['fid']:8.2f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}")
            if f"{protocol}_real_reference" in result:
                r = result[f"{protocol}_real_reference"]
                print(f"[mixlab] {'(real ref)':>10}: FID {r['fid']:8.2f}  precision {r['precision']:.3f}  recall {r['recall']:.3f}"
                      "  <- first n train images vs the test images")
    print(f"[mixlab] metrics: {result['metrics_json']}")
    print(f"[mixlab] grid:    {result['sample_grid']}")
