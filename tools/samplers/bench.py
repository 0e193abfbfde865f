"""`make bench-samplers` (python -m tools.samplers.bench): seconds per training iteration on
Manywell at d = 8 / 32 / 128 / 512 (batch 300, T = 100, Adam), median after warm-up, each row as a
speed-up over a straightforward implementation timed in the same process:

    row        ours                                             straightforward reference
    TB         batched log p_F (one net call over B*T states),  per-step loop rollout (a graph per step),
               vectorised energy                                pair-loop energy (a Python loop over the d/2 wells)
    TB+LP      + grad log R once per state                       + the pair-loop gradient at every step
    FL-SubTB   vectorised SubTB over all (m, n), FL flow         per-sample SubTB loop, pair-loop log R at every state
    LS         MALA caching log R / grad (1 energy call / step)  uncached MALA (2 log R + 2 grad calls / step),
               + one backward iteration                          pair-loop energy, loop backward rollout

Optional `--compile`: the ours rows again with torch.compile on the policy (and flow).
`--device cuda` (the default when a GPU is visible) times both implementations on the GPU, all
random numbers drawn there; fp32 throughout, as the experiments train.
"""

import argparse
import math

import torch

from mixlab.samplers.energies import Energy, Manywell
from mixlab.samplers.langevin import langevin_policy
from mixlab.samplers.local_search import AdaptiveStepSize, PaperStepSize, mala
from mixlab.samplers.nets import PISPolicy, forward_looking_flow
from mixlab.samplers.objectives import ForwardLookingSubTB, TrajectoryBalance
from mixlab.samplers.rollout import DiffusionRollout, RankNoise
from tools.bench import device_name, measure, median_step_seconds, save_json


class PairLoopManywell(Energy):
    """Manywell evaluated one (a, b) pair at a time (the straightforward implementation)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim, self.log_z = dim, Manywell(dim).log_z
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_reward(self, x):
        total = x.new_zeros(x.shape[0])
        for k in range(self.dim // 2):
            a, b = x[:, 2 * k], x[:, 2 * k + 1]
            total = total - a**4 + 6 * a**2 + 0.5 * a - 0.5 * b**2
        return total

    def grad_log_reward(self, x):
        cols = []
        for k in range(self.dim // 2):
            a, b = x[:, 2 * k], x[:, 2 * k + 1]
            cols += [-4 * a**3 + 12 * a + 0.5, -b]
        return torch.stack(cols, dim=1)


def subtb_per_sample(log_pf, log_pb, log_r, log_f=None, log_z=None, lam: float = 2.0, **_):
    """SubTB as a loop over the batch (each sample's (T+1) x (T+1) residuals at once)."""
    B, T = log_pf.shape
    k = torch.arange(T + 1, dtype=log_pf.dtype, device=log_pf.device)
    diff = k[None, :] - k[:, None]
    weights = torch.where(diff > 0, lam**diff, torch.zeros_like(diff))
    weights = weights / weights.sum()
    total = log_pf.new_zeros(())
    for b in range(B):
        f = torch.cat([log_f[b, :-1], log_r[b : b + 1].detach()])
        u = f - torch.cat([f.new_zeros(1), (log_pf[b] - log_pb[b]).cumsum(0)])
        total = total + (weights * (u[:, None] - u[None, :]) ** 2).sum()
    return total


def mala_uncached(energy, x, steps, burn_in, eta, rule: AdaptiveStepSize, generator):
    """The textbook chain: log R and grad at the state and at the proposal, every step."""
    rate, kept = 0.0, []
    for step in range(steps):
        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        g_x = energy.grad_log_reward(x)
        prop = x + eta * g_x + math.sqrt(2 * eta) * xi
        g_p = energy.grad_log_reward(prop)
        log_alpha = (
            energy.log_reward(prop)
            - energy.log_reward(x)
            - ((x - prop - eta * g_p) ** 2).sum(1) / (4 * eta)
            + ((prop - x - eta * g_x) ** 2).sum(1) / (4 * eta)
        )
        accept = torch.log(u) < log_alpha
        x = torch.where(accept[:, None], prop, x)
        if step >= burn_in:
            kept.append(prop[accept])
        rate = float(accept.double().mean())
        eta = rule(eta, rate)
    return torch.cat(kept), eta


ROWS = ("TB", "TB+LP", "FL-SubTB", "LS")


def iteration(
    kind: str,
    dim: int,
    straightforward: bool,
    batch: int,
    T: int,
    ls_steps: int,
    compile_nets: bool = False,
    device: torch.device | str = "cpu",
):
    """A closure running one training iteration of `kind` (TB | TB+LP | FL-SubTB | LS) on `device`."""
    torch.manual_seed(0)
    energy = (PairLoopManywell(dim) if straightforward else Manywell(dim)).to(device)
    rollout = DiffusionRollout(T, 1.0, vectorize="false" if straightforward else "auto")
    policy = (langevin_policy(dim) if kind == "TB+LP" else PISPolicy(dim)).to(device)
    flow = forward_looking_flow(dim, 1.0, T).to(device) if kind == "FL-SubTB" else None
    log_z = torch.nn.Parameter(torch.zeros((), device=device))
    params = list(policy.parameters()) + [log_z] + (list(flow.parameters()) if flow is not None else [])
    opt = torch.optim.Adam(params, lr=1e-3)
    if compile_nets:
        policy.compile()
        if flow is not None:
            flow.compile()
    objective = (subtb_per_sample if straightforward else ForwardLookingSubTB()) if kind == "FL-SubTB" else TrajectoryBalance()
    gen = torch.Generator(device=device).manual_seed(1)
    exact = Manywell(dim).to(device).sample(batch, torch.Generator(device=device).manual_seed(2)).float()
    state = {"eta": 0.01}

    def step():
        if kind == "LS":
            if straightforward:
                samples, state["eta"] = mala_uncached(energy, exact, ls_steps, ls_steps // 2, state["eta"], PaperStepSize(), gen)
            else:
                res = mala(energy, exact, ls_steps, ls_steps // 2, state["eta"], PaperStepSize(), generator=gen)
                samples, state["eta"] = res.samples, res.step_size
            x1 = samples[:batch] if len(samples) >= batch else exact
            traj = rollout.backward(policy, energy, x1, RankNoise(gen, len(x1)))
        else:
            traj = rollout.forward(policy, energy, RankNoise(gen, batch), flow=flow)
        loss = objective(**traj.terms(), log_z=log_z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.samplers.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", default="8,32,128,512", help="comma-separated Manywell dimensions, even (default: %(default)s)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows of the table above (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=300, help="trajectories per iteration (default: %(default)s)")
    parser.add_argument("--T", type=int, default=100, help="time steps per trajectory (default: %(default)s)")
    parser.add_argument("--ls-steps", type=int, default=200, help="MALA steps of the LS row (burn-in: half)")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile on the nets")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when a GPU is visible)",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    kinds = [k for k in args.rows.split(",") if k]
    if not kinds or set(kinds) - set(ROWS):
        parser.error(f"--rows: choose from {','.join(ROWS)}, got {args.rows!r}")
    try:
        dims = [int(d) for d in args.dims.split(",")]
    except ValueError:
        parser.error(f"--dims: comma-separated integers, got {args.dims!r}")
    if any(d < 2 or d % 2 for d in dims):
        parser.error(f"--dims: Manywell needs even dimensions >= 2 (pairs of coordinates), got {args.dims!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU visible (torch.cuda.is_available() is False)")
    print(
        f"[mixlab] sampler iterations on {device_name(device)}: batch {args.batch}, T {args.T}, LS {args.ls_steps} MALA steps; "
        f"median of {args.steps} after {args.warmup} warm-up",
        flush=True,
    )
    rows = []
    for dim in dims:
        for kind in kinds:

            def timed(loop: bool, comp: bool = False, kind=kind, dim=dim):
                return lambda: median_step_seconds(
                    iteration(kind, dim, loop, args.batch, args.T, args.ls_steps, comp, device), device, args.steps, args.warmup
                )

            timers = [
                (f"d={dim} {kind} straightforward", {"dim": dim, "row": kind, "impl": "straightforward"}, timed(True)),
                (f"d={dim} {kind} ours", {"dim": dim, "row": kind, "impl": "ours"}, timed(False)),
            ]
            if args.compile:
                timers.append(
                    (f"d={dim} {kind} ours+compile", {"dim": dim, "row": kind, "impl": "ours+compile"}, timed(False, True))
                )
            rows += measure(timers, args.batch, device, "speedup_vs_straightforward", None, ratio="speedup", unit="traj")
    print("\n| d | row | straightforward s/it | ours s/it | speed-up |" + (" compiled s/it | speed-up |" if args.compile else ""))
    print("|---|---|---|---|---|" + ("---|---|" if args.compile else ""))
    for i in range(0, len(rows), 3 if args.compile else 2):
        ref, ours = rows[i], rows[i + 1]
        line = f"| {ref['dim']} | {ref['row']} | {ref['sec_per_step']:.3f} | {ours['sec_per_step']:.3f} | {ours['speedup_vs_straightforward']:.2f}x |"
        if args.compile:
            comp = rows[i + 2]
            line += f" {comp['sec_per_step']:.3f} | {comp['speedup_vs_straightforward']:.2f}x |"
        print(line)
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
