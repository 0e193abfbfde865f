"""`make bench-sedd` / `python -m tools.sedd.bench`: SEDD throughput as ratios to a reference run
in the same process.

Training: tokens/s and peak memory of one optimizer step (score-entropy loss of an absorbing
SEDD, backward, AdamW) for fp32 SDPA (the reference), bf16 autocast, bf16 + flash-attn (CUDA with
flash-attn installed; skipped otherwise, said so), bf16 + torch.compile. On a GPU also the model
FLOPs utilisation: 6 N per token for the weights (N = non-embedding parameters + the output head)
plus 12 n_blocks L hidden per token for attention (forward 2 + backward 4 multiply-adds per
score and per value product), over the GPU's dense bf16 peak.
Sampling: tokens/s and counted network evaluations (NFE) of Euler, analytic and cached analytic
(`param=radd`, time-free) samplers at several step counts and batch sizes.
Defaults are GPU-sized (DiT small, L = 1024, the issue's grid) on CUDA and CPU-sized (DiT tiny,
L = 256, fewer steps) on a CPU: every row says what it ran.
"""

import argparse
import contextlib
import time

import torch

from mixlab.nets.dit import HAS_FLASH_ATTN, DDiT
from mixlab.sedd.graphs import AbsorbingGraph
from mixlab.sedd.noise import LogLinearNoise
from mixlab.sedd.param import RADDScore, ScoreFn, SEDDScore
from mixlab.sedd.sampling import AnalyticPredictor, EulerPredictor, sample
from mixlab.sedd.score_entropy import weighted_score_entropy
from tools.bench import device_name, measure, median_step_seconds, peak_memory_mb, save_json

SIZES = {
    "tiny": dict(hidden=128, n_blocks=4, n_heads=4, cond_dim=64),
    "small": dict(hidden=768, n_blocks=12, n_heads=12, cond_dim=128),
    "medium": dict(hidden=1024, n_blocks=24, n_heads=16, cond_dim=128),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def build(size: str, vocab: int, length: int, device, time_conditioned: bool = True) -> DDiT:
    torch.manual_seed(0)
    return DDiT(vocab_size=vocab + 1, max_length=length, dropout=0.0, time_conditioned=time_conditioned, **SIZES[size]).to(device)


def flops_per_token(net: DDiT, length: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding + head parameters) + attention's 12 n_blocks L hidden."""
    n = net.num_params(non_embedding=True) + sum(p.numel() for p in net.final.linear.parameters())
    return 6.0 * n + 12.0 * len(net.blocks) * length * net.hidden


def train_step_seconds(size, vocab, length, batch, device, dtype, compile, steps, warmup) -> float:
    net = build(size, vocab, length, device)
    if compile:
        net.compile()
    graph, noise, param = AbsorbingGraph(vocab), LogLinearNoise(), SEDDScore(scale_by_sigma=True)
    score, opt = ScoreFn(net, param, graph), torch.optim.AdamW(net.parameters(), lr=3e-4)
    x0 = torch.randint(0, vocab, (batch, length), device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        t = 1e-3 + (1 - 1e-3) * torch.rand(batch, generator=gen, device=device)
        sigma_bar, sigma = noise(t)
        x_t = graph.sample_transition(x0, sigma_bar, generator=gen)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            log_score = score(x_t, sigma_bar)
        loss = weighted_score_entropy(graph, log_score.float(), sigma_bar, sigma, x_t, x0).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_step_seconds(step, device, steps, warmup + (2 if compile else 0))


def training_rows(args, device) -> list[dict]:
    variants = [("fp32 SDPA (reference)", None, False), ("bf16 autocast", torch.bfloat16, False)]
    if device.type == "cuda" and HAS_FLASH_ATTN:
        variants.append(("bf16 + flash-attn", torch.bfloat16, False))
    else:
        print("  (bf16 + flash-attn skipped: " + ("flash-attn is not installed" if device.type == "cuda" else "CPU") + ")")
    if args.compile:
        variants.append(("bf16 + torch.compile", torch.bfloat16, True))
    tokens = args.batch * args.length
    timers = [
        (
            name,
            {"size": args.size, "length": args.length, "batch": args.batch},
            lambda d=dtype, c=comp: train_step_seconds(
                args.size, args.vocab, args.length, args.batch, device, d, c, args.steps, args.warmup
            ),
        )
        for name, dtype, comp in variants
    ]
    rows = measure(timers, tokens, device, "speedup_vs_reference", None, unit="tokens")
    net = build(args.size, args.vocab, args.length, "meta")
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if device.type == "cuda" and k in device_name(device)), None)
    for row in rows:
        row["tokens_per_sec"] = row.pop("images_per_sec")
        if peak is not None:
            row["mfu"] = row["tokens_per_sec"] * flops_per_token(net, args.length) / (peak * 1e12)
            print(f"  {row['variant']:<34} MFU {100 * row['mfu']:.1f}% of {peak:.0f} TFLOP/s bf16")
    return rows


def sampling_rows(args, device) -> list[dict]:
    rows = []
    for name, param, predictor, cache in (
        ("euler", SEDDScore(True), EulerPredictor(), False),
        ("analytic", SEDDScore(True), AnalyticPredictor(), False),
        ("analytic + cache (radd)", RADDScore(), AnalyticPredictor(), True),
    ):
        net = build(args.size, args.vocab, args.length, device, time_conditioned=param.time_conditioned).eval()
        score, graph = ScoreFn(net, param, AbsorbingGraph(args.vocab)), AbsorbingGraph(args.vocab)
        for steps in args.sample_steps:
            for batch in args.sample_batches:
                gen = torch.Generator(device=device).manual_seed(0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                _, stats = sample(
                    score,
                    graph,
                    LogLinearNoise(),
                    batch,
                    args.length,
                    steps,
                    predictor,
                    generator=gen,
                    device=device,
                    cache=cache,
                )
                if device.type == "cuda":
                    torch.cuda.synchronize()
                sec = time.perf_counter() - start
                row = {
                    "sampler": name,
                    "steps": steps,
                    "batch": batch,
                    "length": args.length,
                    "nfe": stats["nfe"],
                    "seconds": sec,
                    "tokens_per_sec": batch * args.length / sec,
                    "peak_memory_mb": peak_memory_mb(device),
                }
                rows.append(row)
                print(
                    f"  {name:<26} T={steps:<5} batch {batch:<3} {row['tokens_per_sec']:9.1f} tokens/s  NFE {row['nfe']:7.1f}  {sec:7.2f} s",
                    flush=True,
                )
    return rows


def step_rows(args, device) -> list[dict]:
    """One analytic step on the absorbing graph after the network (the same log-scores for every
    row): the reference's costs (float32 over every position, its draw), mixlab's float64 formula over
    every position with the Exp-race draw (the general path), and mixlab's step (masked positions
    only, exact draw), at several shares of masked positions; `trajectory` averages the shares a
    log-linear run passes through (0.1 ... 0.9)."""
    from mixlab.sedd.sampling import sample_categorical
    from tools.bench import median_step_seconds
    from tools.sedd.reference_step import reference_analytic_step

    v, batch, length = args.vocab, args.batch, args.length
    graph, noise, predictor = AbsorbingGraph(v), LogLinearNoise(), AnalyticPredictor()
    g = torch.Generator(device=device).manual_seed(0)
    log_score = torch.randn(batch, length, v + 1, generator=g, device=device) * 2
    log_score[..., v] = 0.0
    score = lambda x, sigma_bar: log_score  # noqa: E731 (the network's output, fixed)
    t = torch.full((batch,), 0.5, dtype=torch.float64, device=device)
    dt = 1.0 / 64
    delta = (noise.total(t) - noise.total(t - dt)).float()
    impls = {
        "reference (float32, every position)": lambda x: reference_analytic_step(log_score, x, delta, v, g),
        "mixlab float64, every position": lambda x: sample_categorical(predictor.probs(score, graph, noise, x, t, dt), g),
        "mixlab (masked positions, exact draw)": lambda x: predictor.update(score, graph, noise, x, t, dt, g),
    }
    rows, shares = [], [1.0, 0.9, 0.7, 0.5, 0.3, 0.1]
    for share in shares:
        x = torch.randint(0, v, (batch, length), generator=g, device=device)
        x[torch.rand(batch, length, generator=g, device=device) < share] = v
        ref = None
        for name, step in impls.items():
            sec = median_step_seconds(lambda step=step, x=x: step(x), device, args.steps, args.warmup)
            ref = ref or sec
            rows.append(
                {
                    "impl": name,
                    "masked_share": share,
                    "sec_per_step": sec,
                    "speedup_vs_reference": ref / sec,
                    "vocab": v + 1,
                    "batch": batch,
                    "length": length,
                }
            )
            print(f"  masked {share:4.0%}  {name:<40} {sec:7.3f} s/step  {ref / sec:5.2f}x", flush=True)
    along = [r for r in rows if r["masked_share"] < 1]  # the shares a log-linear run passes through
    ref = sum(r["sec_per_step"] for r in along if r["impl"].startswith("reference")) / (len(shares) - 1)
    for name in impls:
        mean = sum(r["sec_per_step"] for r in along if r["impl"] == name) / (len(shares) - 1)
        rows.append(
            {
                "impl": name,
                "masked_share": "trajectory",
                "sec_per_step": mean,
                "speedup_vs_reference": ref / mean,
                "vocab": v + 1,
                "batch": batch,
                "length": length,
            }
        )
        print(f"  trajectory  {name:<40} {mean:7.3f} s/step  {ref / mean:5.2f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--size", default="small" if cuda else "tiny", choices=list(SIZES))
    p.add_argument("--vocab", type=int, default=50257, help="real tokens (GPT-2 BPE: 50257)")
    p.add_argument("--length", type=int, default=1024 if cuda else 256)
    p.add_argument("--batch", type=int, default=8 if cuda else 4)
    p.add_argument("--steps", type=int, default=10 if cuda else 3)
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--sample-steps", type=int, nargs="*", default=[128, 1024, 4096] if cuda else [16, 64])
    p.add_argument("--sample-batches", type=int, nargs="*", default=[1, 32] if cuda else [1, 4])
    p.add_argument(
        "--skip", choices=["training", "sampling", "step"], nargs="*", default=[], help="sections to leave out (default: none)"
    )
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the torch.compile training row")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out = {"device": device_name(device), "args": vars(args)}
    print(f"device {device} ({device_name(device)}), DiT {args.size}, vocab {args.vocab}, L {args.length}")
    if "training" not in args.skip:
        print(
            f"training step, batch {args.batch}: tokens/s and ratio to fp32 SDPA (median of {args.steps} after {args.warmup} warm-up)"
        )
        out["training"] = training_rows(args, device)
    if "step" not in args.skip:
        print(
            f"analytic step after the network, batch {args.batch} x L {args.length}, V {args.vocab + 1} "
            f"(median of {args.steps} after {args.warmup} warm-up)"
        )
        out["step"] = step_rows(args, device)
    if "sampling" not in args.skip:
        print("sampling (an untrained net: NFE of the cache depends on how many tokens are unmasked per step, not on training)")
        out["sampling"] = sampling_rows(args, device)
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
