"""MCL training-step benchmark: `make bench-mcl` / `python -m tools.mcl.bench [--experts 4 --batch 128 --rows ...]`.

The reference row is one optimizer step of the plain baseline system (ScoreDiffusion's eps loss on
EpsilonPrecond(ScoreNet()), backward, global grad-norm clipping at 1, Adam). Then MCL steps with K
seed ScoreNets, driven through MCLDiffusion's own `training_step` (what training runs: loss
matrix, assignment rule, per-expert losses; dense or sparse), backward, per-expert clipping and
Adam: annealed WTA dense (loop over parameter slices / vmap), hard WTA dense (loop) and sparse.
Each row reports images/s and cost_vs_baseline = its seconds per step / the baseline's: a dense
K-expert step is about K baseline steps; the sparse one about K/3 + 1 (K no-grad forwards, then
one forward/backward over the batch split among the winners). The work behind that is counted,
not timed, in expert-forward rows per step (one row = one sample through one expert's net):
`grad_rows` (forwards that are also backpropagated) and `nograd_rows` (routing forwards): the
baseline B / 0, a dense step K B / 0, the sparse step B / K B.
"""

import argparse
from collections import Counter
from functools import partial

import torch

from mixlab.mcl.assignment import AnnealedWTA, HardWTA
from mixlab.mcl.system import MCLDiffusion
from mixlab.nets.scorenet import ScoreNet
from mixlab.score.losses import EpsilonLoss
from mixlab.score.schedule import LogUniformSigma
from mixlab.score.system import ScoreDiffusion
from tools.bench import device_name, measure, median_step_seconds


class _Unlogged:
    """No Trainer runs these systems: `self.log` is a no-op (the step's metrics are not wanted)."""

    def log(self, *args, **kwargs) -> None:
        pass


class BenchBaseline(_Unlogged, ScoreDiffusion):
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)  # Lightning's gradient_clip_val (norm)


class BenchMCL(_Unlogged, MCLDiffusion):
    pass


def build_system(
    device: torch.device, experts: int = 0, rule=None, vectorize: bool = False, sparse: bool = False, dropout: float = 0.05
):
    """The baseline system (experts=0) or an MCL system with K=experts, in train mode on `device`."""
    torch.manual_seed(0)
    common = dict(loss=EpsilonLoss(), sigma_sampler=LogUniformSigma(), optimizer=partial(torch.optim.Adam, lr=3e-4))
    if not experts:
        return BenchBaseline(net=ScoreNet(dropout=dropout), **common).to(device).train()
    system = BenchMCL(
        net=ScoreNet(dropout=dropout), assignment=rule, num_experts=experts, vectorize=vectorize, sparse=sparse, **common
    )
    system.temperature = 1.0  # annealed WTA's tau (the cost does not depend on it)
    return system.to(device).train()


def count_rows(system, counter: Counter) -> None:
    """Count the system's expert-forward rows into counter["grad_rows"] / ["nograd_rows"] (by whether
    autograd records the forward): the baseline's net, or every StackedExperts call of an MCL system."""

    def add(rows: int) -> None:
        counter["grad_rows" if torch.is_grad_enabled() else "nograd_rows"] += rows

    if not isinstance(system, MCLDiffusion):
        system.model.register_forward_pre_hook(lambda module, args: add(args[0].shape[0]))
        return
    stacked, inside = system.experts, []
    forward, expert = stacked.forward, stacked.expert

    def counted_forward(*args):  # all K experts (a loop over `expert` or one vmap)
        add(stacked.num_experts * args[0].shape[0])
        inside.append(True)
        try:
            return forward(*args)
        finally:
            inside.pop()

    def counted_expert(k, *args):  # one expert, unless called by counted_forward (counted there)
        if not inside:
            add(args[0].shape[0])
        return expert(k, *args)

    stacked.forward, stacked.expert = counted_forward, counted_expert


def step_rows(system, device: torch.device, batch: int) -> dict[str, int]:
    """Expert-forward rows of one training_step on a batch of `batch` images (counted, not timed)."""
    counter = Counter(grad_rows=0, nograd_rows=0)
    count_rows(system, counter)
    system.training_step((torch.rand(batch, 1, 28, 28, device=device) * 2 - 1,), 0)
    return dict(counter)


def step_seconds(system, device: torch.device, batch: int, steps: int, warmup: int) -> float:
    """Median seconds of training_step + backward + the system's clipping (at 1) + optimizer step."""
    optimizer = system.configure_optimizers()
    x0 = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1

    def step():
        out = system.training_step((x0,), 0)
        loss = out["loss"] if isinstance(out, dict) else out
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        system.configure_gradient_clipping(optimizer, 1.0)
        optimizer.step()

    return median_step_seconds(step, device, steps, warmup)


ROWS = ("annealed-loop", "annealed-vmap", "hard-loop", "sparse")  # --rows choices; the baseline reference always runs


def plan(experts: int, device: torch.device, rows: tuple[str, ...] = ROWS) -> list[tuple[str, dict, dict]]:
    """(row name, extra row fields, build_system keywords) for the baseline reference, then the `rows`."""
    auto = device.type == "cuda"  # what model.vectorize=auto picks (the sparse path's routing forward)

    def mcl(rule, path: str, vectorize: bool) -> tuple[dict, dict]:
        fields = {"experts": experts, "rule": type(rule).__name__, "path": path, "vectorize": vectorize}
        return fields, dict(experts=experts, rule=rule, vectorize=vectorize, sparse=path == "sparse")

    variants = {
        "annealed-loop": (f"annealed WTA K={experts}, dense loop", *mcl(AnnealedWTA(), "dense", False)),
        "annealed-vmap": (f"annealed WTA K={experts}, dense vmap", *mcl(AnnealedWTA(), "dense", True)),
        "hard-loop": (f"hard WTA K={experts}, dense loop", *mcl(HardWTA(), "dense", False)),
        "sparse": (f"hard WTA K={experts}, sparse", *mcl(HardWTA(), "sparse", auto)),
    }
    return [
        ("baseline step (reference)", {"experts": 1, "rule": "-", "path": "baseline", "vectorize": False}, {}),
        *(variants[r] for r in ROWS if r in rows),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dropout", type=float, default=0.05, help="ScoreNet dropout (the seed's 0.05; masks cost CPU time)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows after the baseline (default: %(default)s)")
    args = p.parse_args(argv)
    rows = tuple(r for r in args.rows.split(",") if r)
    if not rows or set(rows) - set(ROWS):
        p.error(f"--rows: choose from {','.join(ROWS)}, got {args.rows!r}")
    if args.experts < 1 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--experts, --batch and --steps must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    print(
        f"device {device} ({device_name(device)}), seed ScoreNets (dropout {args.dropout}), batch {args.batch}, "
        f"median of {args.steps} steps after {args.warmup} warm-up; cost = seconds per step / baseline's"
    )

    def seconds(kw: dict, extra: dict) -> float:
        extra.update(
            step_rows(build_system(device, dropout=args.dropout, **kw), device, args.batch)
        )  # the row's fields, before timing
        return step_seconds(build_system(device, dropout=args.dropout, **kw), device, args.batch, args.steps, args.warmup)

    timers = [(name, extra, partial(seconds, kw, extra)) for name, extra, kw in plan(args.experts, device, rows)]
    return measure(timers, args.batch, device, "cost_vs_baseline", args.json, ratio="cost")


if __name__ == "__main__":
    main()
