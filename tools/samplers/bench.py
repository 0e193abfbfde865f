"""`make bench-samplers` (python -m tools.samplers.bench): seconds per training iteration on
Manywell at d = 8 / 32 / 128 / 512 (batch 300, T = 100, Adam), median after warm-up, each row as a
speed-up over a baseline with the reference code's costs (GFNOrg/gfn-diffusion, written here from
its description), timed in the same process:

    row          ours                                           reference-cost baseline (ReferenceCostRollout)
    TB           one network pass per rollout (recorded, then   per-step rollout with a graph per step, time
                 replayed in one batched backward), time        features repeated over the batch, full-tensor
                 features once per grid, vectorised energy      log-variances, log p_F / log p_B / states written
                                                                in place step by step, pair-loop energy (a
                                                                Python loop over the d/2 wells, as its ManyWell)
    TB+Expl      + exploration (std 0.2) in the sampling step   + a logaddexp of variances per step
    TB+LP        + grad log R once per state                    + grad log R by autograd at every step
    FL-SubTB+LP  vectorised SubTB over all (m, n), the FL flow  per-sample SubTB loop, the flow and log R at
                 on the policy's embeddings, LP                 every state, LP as above
    LS           MALA caching log R / grad (1 energy call /     uncached MALA (2 log R + 2 grad calls / step),
                 step) + one backward iteration                 pair-loop energy, loop backward rollout
    buffer       ring buffer, rank order merged on each add     contents concatenated and re-ranked (argsort
                 (one add + one batch per iteration, at         of argsort) on every add, a weighted draw of
                 --buffer-fill entries)                         N positions, a batch gathered entry by entry

`python -m tools.samplers.versus_reference` times the reference code itself beside mixlab.

Optional `--compile`: the ours rows again with torch.compile on the policy (and flow).
`--device cuda` (the default when a GPU is visible) times both implementations on the GPU, all
random numbers drawn there; fp32 throughout, as the experiments train.
"""

import argparse
import math
from collections.abc import Callable

import numpy as np
import torch

from mixlab.samplers.buffer import ReplayBuffer
from mixlab.samplers.energies import Energy, Manywell
from mixlab.samplers.langevin import langevin_output, langevin_policy
from mixlab.samplers.local_search import AdaptiveStepSize, PaperStepSize, mala
from mixlab.samplers.nets import PISPolicy, forward_looking_flow
from mixlab.samplers.objectives import ForwardLookingSubTB, TrajectoryBalance
from mixlab.samplers.rollout import DiffusionRollout, RankNoise, Trajectories
from tools.bench import device_name, measure, median_step_seconds, save_json


class PairLoopManywell(Energy):
    """Manywell evaluated one (a, b) pair at a time, as the reference code's ManyWell does."""

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


class ReferenceCostRollout(DiffusionRollout):
    """Rollouts with the reference code's per-step costs (its `get_trajectory_fwd`, written here
    from its description): every step runs the policy with a graph, the time features of one time
    repeated over the batch, log-variances as full tensors, exploration by a logaddexp of
    variances, log p_F and log p_B (one Gaussian log-density per transition) and the states written
    in place into preallocated tensors; grad log R by autograd at every state (Langevin policy), the
    flow and, for FL-SubTB, log R at every state. Backward rollouts: the loop path. The outputs are
    ours (tested): only the cost differs."""

    def __init__(self, T: int, sigma2: float):
        super().__init__(T, sigma2, vectorize="false")

    def _policy(self, policy, energy, x, i):
        net = getattr(policy, "net", policy)  # the PIS network inside a Langevin policy
        t = self.time(i, x)
        h = net.joint(net.s_embed(x) + net.t_embed(t).repeat(len(x), 1))
        if not policy.needs_grad:
            return h.clamp(-net.clip, net.clip)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            grad = torch.autograd.grad(energy.log_reward(xg).sum(), xg)[0]
        return langevin_output(h, policy.scale(t), grad, policy.grad_clip, net.clip)

    def forward(self, policy, energy, noise, flow=None, exploration: float = 0.0, reparametrise: bool = False):
        B, d, T = noise.batch, energy.dim, self.T
        like = next(policy.parameters())
        x = like.new_zeros(B, d)
        log_pf, log_pb, log_f = like.new_zeros(B, T), like.new_zeros(B, T), like.new_zeros(B, T + 1)
        states = like.new_zeros(B, T + 1, d)
        for i in range(T):
            out = self._policy(policy, energy, x, i)
            u, raw = out.chunk(2, dim=-1)
            log_var = torch.zeros_like(raw) + math.log(self.sigma2)  # unlearned variance, as a tensor
            if flow is not None:
                log_f[:, i] = flow(x, self.time(i, x), energy.log_reward(x) if flow.uses_log_r else None)
            sample_log_var = log_var.detach()
            if exploration > 0:
                sample_log_var = torch.logaddexp(
                    log_var, torch.full_like(log_var, 2 * math.log(exploration / math.sqrt(self.dt)))
                )
            xi = noise.normal(d, x.dtype, x.device)
            x_next = x + self.dt * u.detach() + math.sqrt(self.dt) * (sample_log_var / 2).exp() * xi
            z = ((x_next - x) - self.dt * u) / (math.sqrt(self.dt) * (log_var / 2).exp())
            log_pf[:, i] = -0.5 * (z**2 + math.log(2 * math.pi) + math.log(self.dt) + log_var).sum(1)
            if i > 0:
                back_mean = x_next - self.dt * x_next / ((i + 1) * self.dt) * torch.ones_like(x_next)
                back_var = self.sigma2 * self.dt * i / (i + 1) * torch.ones_like(x_next)
                zb = (x - back_mean) / back_var.sqrt()
                log_pb[:, i] = -0.5 * (zb**2 + math.log(2 * math.pi) + back_var.log()).sum(1)
            x = x_next
            states[:, i + 1] = x
        log_r = energy.log_reward(x).detach()
        log_f[:, T] = log_r
        return Trajectories(states, log_pf, log_pb, log_r, log_f if flow is not None else None)


class ReRankingBuffer:
    """The reference code's replay-buffer costs: every add concatenates the contents and ranks all of
    them again (argsort of argsort in numpy); batches come from one weighted draw of N positions
    (made when the previous one is used up) and are gathered one entry at a time and stacked, as
    a DataLoader's default fetch does."""

    def __init__(self, capacity: int = 600_000, k: float = 0.01):
        self.capacity, self.k = capacity, k
        self.x = self.log_r = self.weights = None
        self.order, self.cursor = torch.empty(0, dtype=torch.long), 0

    def add(self, x: torch.Tensor, log_r: torch.Tensor) -> None:
        self.x = x if self.x is None else torch.cat([self.x, x])[-self.capacity :]
        self.log_r = log_r if self.log_r is None else torch.cat([self.log_r, log_r])[-self.capacity :]
        scores = self.log_r.cpu().numpy()
        ranks = np.argsort(np.argsort(-scores))
        self.weights = torch.as_tensor(1.0 / (self.k * len(scores) + ranks), device=self.log_r.device)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cursor + n > len(self.order):
            self.order = torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator)
            self.cursor = 0
        picks = self.order[self.cursor : self.cursor + n].tolist()
        self.cursor += n
        return torch.stack([self.x[i] for i in picks]), torch.stack([self.log_r[i] for i in picks])


ROWS = ("TB", "TB+Expl", "TB+LP", "FL-SubTB+LP", "LS", "buffer")
EXPLORATION = 0.2  # the TB+Expl row's exploration std (the paper's initial value)


def iteration(
    kind: str,
    dim: int,
    reference_cost: bool,
    batch: int,
    T: int,
    ls_steps: int,
    compile_nets: bool = False,
    device: torch.device | str = "cpu",
    buffer_fill: int = 30_000,
):
    """A closure running one training iteration of `kind` (one of ROWS) on `device`;
    reference_cost: the baseline with the reference code's costs."""
    if kind == "buffer":
        return buffer_iteration(dim, reference_cost, batch, buffer_fill, device)
    torch.manual_seed(0)
    energy = (PairLoopManywell(dim) if reference_cost else Manywell(dim)).to(device)
    rollout = ReferenceCostRollout(T, 1.0) if reference_cost else DiffusionRollout(T, 1.0)
    policy = (langevin_policy(dim) if kind.endswith("LP") else PISPolicy(dim)).to(device)
    flow = forward_looking_flow(dim, 1.0, T, share_embeddings=True, policy=policy).to(device) if kind.startswith("FL") else None
    log_z = torch.nn.Parameter(torch.zeros((), device=device))
    params = list(policy.parameters()) + [log_z] + (list(flow.parameters()) if flow is not None else [])
    opt = torch.optim.Adam(params, lr=1e-3)
    if compile_nets:
        policy.compile()
        if flow is not None:
            flow.compile()
    objective = (subtb_per_sample if reference_cost else ForwardLookingSubTB()) if kind.startswith("FL") else TrajectoryBalance()
    gen = torch.Generator(device=device).manual_seed(1)
    exact = Manywell(dim).to(device).sample(batch, torch.Generator(device=device).manual_seed(2)).float()
    state = {"eta": 0.01}

    def step():
        if kind == "LS":
            if reference_cost:
                samples, state["eta"] = mala_uncached(energy, exact, ls_steps, ls_steps // 2, state["eta"], PaperStepSize(), gen)
            else:
                res = mala(energy, exact, ls_steps, ls_steps // 2, state["eta"], PaperStepSize(), generator=gen)
                samples, state["eta"] = res.samples, res.step_size
            x1 = samples[:batch] if len(samples) >= batch else exact
            traj = rollout.backward(policy, energy, x1, RankNoise(gen, len(x1)))
        else:
            eps = EXPLORATION if kind == "TB+Expl" else 0.0
            traj = rollout.forward(policy, energy, RankNoise(gen, batch), flow=flow, exploration=eps)
        loss = objective(**traj.terms(), log_z=log_z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def buffer_iteration(dim: int, reference_cost: bool, batch: int, fill: int, device) -> Callable[[], None]:
    """One add of `batch` terminal states and one batch drawn, at `fill` entries."""
    gen = torch.Generator(device=device).manual_seed(0)
    data = Manywell(dim).to(device)
    buf = ReRankingBuffer() if reference_cost else ReplayBuffer()
    for _ in range(max(1, fill // batch)):
        x = torch.randn(batch, dim, generator=gen, device=device)
        buf.add(x, data.log_reward(x))

    def step():
        x = torch.randn(batch, dim, generator=gen, device=device)
        buf.add(x, data.log_reward(x))
        buf.sample(batch, gen)

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
    parser.add_argument(
        "--buffer-fill", type=int, default=30_000, help="entries in the buffer row's buffer (default: %(default)s)"
    )
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

            def timed(reference_cost: bool, comp: bool = False, kind=kind, dim=dim):
                return lambda: median_step_seconds(
                    iteration(kind, dim, reference_cost, args.batch, args.T, args.ls_steps, comp, device, args.buffer_fill),
                    device,
                    args.steps,
                    args.warmup,
                )

            timers = [
                (f"d={dim} {kind} reference-cost", {"dim": dim, "row": kind, "impl": "reference-cost"}, timed(True)),
                (f"d={dim} {kind} ours", {"dim": dim, "row": kind, "impl": "ours"}, timed(False)),
            ]
            if args.compile:
                timers.append(
                    (f"d={dim} {kind} ours+compile", {"dim": dim, "row": kind, "impl": "ours+compile"}, timed(False, True))
                )
            rows += measure(timers, args.batch, device, "speedup_vs_reference_cost", None, ratio="speedup", unit="traj")
    print("\n| d | row | reference-cost s/it | ours s/it | speed-up |" + (" compiled s/it | speed-up |" if args.compile else ""))
    print("|---|---|---|---|---|" + ("---|---|" if args.compile else ""))
    for i in range(0, len(rows), 3 if args.compile else 2):
        ref, ours = rows[i], rows[i + 1]
        line = f"| {ref['dim']} | {ref['row']} | {ref['sec_per_step']:.3f} | {ours['sec_per_step']:.3f} | {ours['speedup_vs_reference_cost']:.2f}x |"
        if args.compile:
            comp = rows[i + 2]
            line += f" {comp['sec_per_step']:.3f} | {comp['speedup_vs_reference_cost']:.2f}x |"
        print(line)
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
