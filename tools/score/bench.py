"""Training-throughput benchmark of the baseline: `make bench` / `python -m tools.score.bench
[--batch 128 --steps 20]`.

Times optimizer steps of the seed's baseline (ScoreNet, eps loss, Adam) for several variants in
one process and reports each as images/s and as a speed-up over the plain fp32 reference, so
the numbers are comparable across machines. Peak memory: CUDA max allocated, or process max RSS
(which only grows: read the CPU column as "at most").
"""

import argparse
import contextlib

import torch

from mixlab.nets.scorenet import ScoreNet
from mixlab.score.losses import EpsilonLoss
from mixlab.score.precond import EpsilonPrecond
from mixlab.score.schedule import LogUniformSigma
from tools.bench import device_name, measure, median_step_seconds

VARIANTS = {  # name -> (channels_last, autocast dtype or None, torch.compile)
    "fp32 (reference)": (False, None, False),
    "channels_last": (True, None, False),
    "bf16 autocast": (False, torch.bfloat16, False),
    "bf16 + channels_last": (True, torch.bfloat16, False),
    "torch.compile (model.compile=true)": (False, None, True),
}


def time_variant(device: torch.device, batch: int, steps: int, warmup: int, channels_last: bool, dtype, compile: bool) -> float:
    """Median seconds per optimizer step (compilation happens in the warm-up steps)."""
    torch.manual_seed(0)
    model = EpsilonPrecond(ScoreNet()).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if compile:
        model.compile()  # what model.compile=true does: compiled forward, same parameter names
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

    return median_step_seconds(step, device, steps, warmup + (2 if compile else 0))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(
        f"device {device} ({device_name(device)}), batch {args.batch}, median of {args.steps} steps after {args.warmup} warm-up"
    )
    timers = [
        (name, {}, lambda name=name: time_variant(device, args.batch, args.steps, args.warmup, *VARIANTS[name]))
        for name in args.variants
    ]
    return measure(timers, args.batch, device, "speedup_vs_reference", args.json)


if __name__ == "__main__":
    main()
