"""The `sedd` and `ar` evaluators: the likelihood (bound) of a text checkpoint on a data split.

`make eval ckpt=PATH [timesteps=1000 split=test limit= devices=1]` on a SEDD checkpoint: the
ELBO with K stratified timesteps per sequence (mixlab.sedd.elbo), from the EMA weights, reported
as nats/token and perplexity bound +- standard error over sequences, with the prior-KL term and
the [0, eps) truncation reported separately. Sequences are sharded over `devices` ranks without
duplicates (trainer.test; per-sequence terms gathered by torchmetrics). The same command on an
autoregressive baseline (`experiment=ar_char|ar_bpe`) reports its exact test perplexity.
"""

import math
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from mixlab.core.checkpoint import load_system
from mixlab.core.config import build, require
from mixlab.core.distributed import DestroyProcessGroupAtExit
from mixlab.core.evaluate import out_dir_of, resolve_device
from mixlab.core.validate import PositiveInt, check_value


def split_datamodule(run_cfg: DictConfig, cfg: DictConfig):
    """The run's data module, serving `cfg.split` (val | test) as its test split (`limit` blocks spread over it)."""
    require(cfg.split in ("val", "test"), "split", f"unknown split '{cfg.split}' (choose val|test)")
    if cfg.get("limit") is not None:
        check_value(cfg.limit, PositiveInt, "limit")
    split = run_cfg.data.get(f"{cfg.split}_split", cfg.split)
    return build(run_cfg.data, root=cfg.paths.data_dir, test_split=split, test_limit=cfg.get("limit"))


def test_trainer(cfg: DictConfig, device: torch.device) -> L.Trainer:
    check_value(cfg.devices, PositiveInt, "devices")
    return L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=cfg.devices,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
        callbacks=[DestroyProcessGroupAtExit()],
        use_distributed_sampler=False,
        precision=cfg.get("precision", "32-true"),
    )


def cost_estimate(system, datamodule, cfg: DictConfig, device: torch.device) -> str:
    """Forward passes the ELBO needs and their time at one measured forward (printed before it runs)."""
    datamodule.setup("test")
    n = len(datamodule.blocks("test"))
    length = datamodule.length
    chunk = min(cfg.batch_size, n) * cfg.t_batch
    x = torch.randint(0, system.vocab_size, (chunk, length), device=device)
    with torch.no_grad():
        system.score(x, torch.ones(chunk, device=device))  # warm-up
        start = time.perf_counter()
        system.score(x, torch.ones(chunk, device=device))
        seconds = time.perf_counter() - start
    forwards = (
        math.ceil(n / cfg.batch_size) * math.ceil(cfg.timesteps / cfg.t_batch) + math.ceil(n / cfg.batch_size) * 4 / cfg.t_batch
    )
    return (
        f"[mixlab] ELBO of {n} sequences x {length} tokens ({n * length:,} tokens), {cfg.timesteps} timesteps each: "
        f"~{forwards:,.0f} forwards of {chunk} sequences, ~{forwards * seconds / 60:.1f} min at {seconds:.2f} s each "
        f"on {device} x {cfg.devices} device(s)"
    )


def summarise(terms: dict[str, torch.Tensor]) -> dict:
    """nats/token, ppl bound and standard error (per-sequence bounds are i.i.d. draws) from the
    gathered per-sequence terms."""
    tokens = terms["tokens"]
    total = float(tokens.sum())
    per_seq = terms["total"] / tokens  # nats/token of each sequence
    n = len(per_seq)
    nats = float(terms["total"].sum()) / total
    se = float(per_seq.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    ppl = math.exp(nats) if nats < 700 else float("inf")
    out = {
        "sequences": n,
        "tokens": int(total),
        "nats_per_token": nats,
        "nats_per_token_se": se,
        "ppl_bound": ppl,
        "ppl_bound_se": ppl * se,
        "bits_per_token": nats / math.log(2),
    }
    for key in ("diffusion", "truncation", "prior"):
        out[f"{key}_nats_per_token"] = float(terms[key].sum()) / total
    return out


def load_sedd(cfg: DictConfig, positive: tuple[str, ...]):
    """Check the evaluator's integer options `positive` (>= 1), then load `cfg.ckpt`, which must be
    a SEDD checkpoint; returns (system, run config, checkpoint dict, device)."""
    from mixlab.sedd.system import SEDD

    for key in positive:
        check_value(cfg[key], PositiveInt, key)
    device = resolve_device(cfg.device)
    system, run_cfg, ckpt = load_system(cfg.ckpt, device)
    require(isinstance(system, SEDD), "ckpt", f"{cfg.ckpt} is a {type(system).__name__} checkpoint, not a SEDD one")
    return system, run_cfg, ckpt, device


def evaluate(cfg: DictConfig) -> dict:
    """The `sedd` evaluator (conf/evaluator/sedd.yaml)."""
    system, run_cfg, ckpt, device = load_sedd(cfg, ("timesteps", "t_batch", "batch_size"))
    datamodule = split_datamodule(run_cfg, cfg)
    datamodule.batch_size = cfg.batch_size * cfg.devices
    system.eval_options = {"timesteps": cfg.timesteps, "t_batch": cfg.t_batch, "seed": cfg.seed}
    print(cost_estimate(system, datamodule, cfg, device), flush=True)
    trainer = test_trainer(cfg, device)
    start = time.perf_counter()
    trainer.test(system, datamodule=datamodule, verbose=False)
    result = {
        "ckpt": str(Path(cfg.ckpt).resolve()),
        "global_step": ckpt.get("global_step"),
        "split": cfg.split,
        "corpus": run_cfg.data.get("corpus"),
        "tokenizer": run_cfg.data.get("tokenizer"),
        "timesteps": cfg.timesteps,
        "seed": cfg.seed,
        **summarise(system.elbo_terms()),
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(device),
        "devices": cfg.devices,
    }
    if trainer.is_global_zero:
        write_report(cfg, result, "elbo")
    return result


def evaluate_ar(cfg: DictConfig) -> dict:
    """The `ar` evaluator: the autoregressive baseline's exact test perplexity."""
    from mixlab.sedd.ar import AutoRegressive

    check_value(cfg.batch_size, PositiveInt, "batch_size")
    device = resolve_device(cfg.device)
    system, run_cfg, ckpt = load_system(cfg.ckpt, device)
    require(isinstance(system, AutoRegressive), "ckpt", f"{cfg.ckpt} is a {type(system).__name__} checkpoint, not an AR one")
    datamodule = split_datamodule(run_cfg, cfg)
    datamodule.batch_size = cfg.batch_size * cfg.devices
    trainer = test_trainer(cfg, device)
    metrics = trainer.test(system, datamodule=datamodule, verbose=False)[0]
    result = {
        "ckpt": str(Path(cfg.ckpt).resolve()),
        "global_step": ckpt.get("global_step"),
        "split": cfg.split,
        "corpus": run_cfg.data.get("corpus"),
        "tokenizer": run_cfg.data.get("tokenizer"),
        "nats_per_token": metrics["test/nats_per_token"],
        "ppl": metrics["test/ppl"],
        "bits_per_token": metrics["test/nats_per_token"] / math.log(2),
        "device": str(device),
    }
    if trainer.is_global_zero:
        write_report(cfg, result, "ar")
    return result


def write_report(cfg: DictConfig, result: dict, kind: str) -> None:
    out = out_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{kind}_{cfg.split}" + (f"_T{cfg.timesteps}" if kind == "elbo" else "") + f"_seed{cfg.seed}"
    path = out / f"{tag}.json"
    from mixlab.core.checkpoint_io import write_json_atomic

    write_json_atomic(path, result)
    if kind == "elbo":
        print(
            f"[mixlab] {result['split']}: {result['nats_per_token']:.4f} +- {result['nats_per_token_se']:.4f} nats/token, "
            f"ppl <= {result['ppl_bound']:.3f} +- {result['ppl_bound_se']:.3f} ({result['tokens']:,} tokens, {result['sequences']} sequences)"
        )
        print(
            f"[mixlab]   diffusion {result['diffusion_nats_per_token']:.4f} + [0, eps) {result['truncation_nats_per_token']:.2e} "
            f"+ prior {result['prior_nats_per_token']:.2e} nats/token"
        )
    else:
        print(f"[mixlab] {result['split']}: {result['nats_per_token']:.4f} nats/token, ppl {result['ppl']:.3f}")
    print(f"[mixlab] metrics: {path}")
