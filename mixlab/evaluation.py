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
from mixlab.config import build, check_choice, check_positive_int, check_sampler, require
from mixlab.diffusion.samplers import num_evaluations
from mixlab.errors import ConfigError
from mixlab.metrics.fidelity import PROTOCOLS, ClassifierFeatures, InceptionFeatures, cached_features, fidelity_metrics
from mixlab.systems.loading import load_system


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


def evaluate(cfg: DictConfig) -> dict:
    validate_eval(cfg)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device))
    system, run_cfg, ckpt = load_system(cfg.ckpt, device)
    dataset = run_cfg.data.dataset
    datamodule = build(run_cfg.data, root=cfg.paths.data_dir)
    if cfg.n < 2 * max(p["k"] for p in PROTOCOLS.values()):
        raise ConfigError("n", f"{cfg.n} samples is too few for precision/recall; use at least 16")
    real = datamodule.real_images(cfg.n, split="test")  # fails early (clear error) if data is missing

    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    t0 = time.perf_counter()
    fake = system.sample(cfg.n, solver=cfg.solver, steps=cfg.steps, grid=cfg.grid, generator=gen, batch_size=cfg.batch_size)
    sample_s = time.perf_counter() - t0

    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.ckpt).resolve().parent.parent / "eval"
    tag = f"{cfg.solver}_{cfg.grid}{cfg.steps}_n{cfg.n}_seed{cfg.seed}"
    grid_path = save_grid(fake[:64], out_dir / f"samples_{tag}.png")
    result = {
        "ckpt": str(Path(cfg.ckpt).resolve()), "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step"),
        "dataset": dataset, "n": cfg.n, "solver": cfg.solver, "grid": cfg.grid, "steps": cfg.steps,
        "nfe": num_evaluations(cfg.solver, cfg.steps), "seed": cfg.seed, "sampling_seconds": round(sample_s, 2),
        "device": str(device), "sample_grid": str(grid_path),
    }
    for protocol in cfg.protocols:
        extractor = feature_extractor(protocol, cfg, dataset, device)
        cache = Path(cfg.paths.data_dir) / "stats" / f"{dataset}_test_first{cfg.n}_{protocol}.npz"
        real_feats = cached_features(extractor, lambda: real, cache, expected_count=cfg.n)
        k = PROTOCOLS[protocol]["k"]
        result[protocol] = fidelity_metrics(real_feats, extractor(fake), k=k, kid=cfg.kid)
        if cfg.real_reference:  # what a perfect model would score at this n: train vs test images
            train_real = datamodule.real_images(cfg.n, split="train")
            result[f"{protocol}_real_reference"] = fidelity_metrics(real_feats, extractor(train_real), k=k, kid=cfg.kid)
    metrics_path = out_dir / f"metrics_{tag}.json"
    metrics_path.write_text(json.dumps(result, indent=2))
    result["metrics_json"] = str(metrics_path)
    print_report(result)
    return result


def print_report(result: dict) -> None:
    print(f"[mixlab] {result['n']} samples, {result['solver']} {result['grid']} {result['steps']} steps "
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
