"""Training-throughput benchmark: `make bench` / `python -m mixlab.bench [--batch 128 --steps 20]`.

Times optimizer steps of the baseline (seed ScoreNet, eps loss, Adam) for several variants in
one process and reports each as images/s and as a ratio to the plain fp32 reference, so the
numbers are comparable across machines. Peak memory: CUDA max allocated, or process max RSS.
"""

import argparse
import contextlib
import json
import resource
import time

import torch

from mixlab.diffusion.loss import EpsilonLoss
from mixlab.diffusion.precond import EpsilonPrecond
from mixlab.diffusion.schedule import LogUniformSigma
from mixlab.nets.scorenet import ScoreNet

VARIANTS = {  # name -> (channels_last, autocast dtype or None)
    "fp32 (reference)": (False, None),
    "channels_last": (True, None),
    "bf16 autocast": (False, torch.bfloat16),
    "bf16 + channels_last": (True, torch.bfloat16),
}


def median_step_seconds(step, device: torch.device, steps: int, warmup: int) -> float:
    """Median wall time of `step()` (one optimizer step) after `warmup` untimed calls."""
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def time_variant(device: torch.device, batch: int, steps: int, warmup: int, channels_last: bool, dtype) -> float:
    """Median seconds per optimizer step."""
    torch.manual_seed(0)
    model = EpsilonPrecond(ScoreNet()).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_fn, sigmas = EpsilonLoss(), LogUniformSigma()
    x0 = (torch.rand(batch, 1, 28, 28, device=device) * 2 - 1).contiguous(memory_format=fmt)

    def step():
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(model, x0, sigmas(batch, device=device), torch.randn_like(x0)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_step_seconds(step, device, steps, warmup)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"


def measure(timers: list[tuple[str, dict, object]], batch: int, device: torch.device, ratio_key: str, json_path: str | None) -> list[dict]:
    """Run each (name, extra row fields, seconds-per-step callable), print and return rows with
    images/s and the ratio to the first (the reference); optionally write them as JSON."""
    rows, ref = [], None
    for name, extra, seconds in timers:
        sec = seconds()
        ref = ref or sec
        row = {"variant": name, **extra, "sec_per_step": sec, "images_per_sec": batch / sec, ratio_key: ref / sec,
               "peak_memory_mb": peak_memory_mb(device)}
        rows.append(row)
        print(f"  {name:<30} {row['images_per_sec']:9.1f} img/s   x{row[ratio_key]:.2f}   peak {row['peak_memory_mb']:.0f} MB")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device} ({device_name(device)}), batch {args.batch}, median of {args.steps} steps after {args.warmup} warm-up")
    timers = [(name, {}, lambda name=name: time_variant(device, args.batch, args.steps, args.warmup, *VARIANTS[name])) for name in args.variants]
    return measure(timers, args.batch, device, "speedup_vs_reference", args.json)

if __name__ == "__main__":
    main()
