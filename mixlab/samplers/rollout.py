"""Diffusion-sampler trajectories (Sendera et al. 2024, reference §1).

Uniform grid t_i = i dt, dt = 1/T, x_0 = 0. Forward policy
    p_F(x_{i+1} | x_i) = N(x_i + dt u(x_i, t_i), dt sigma2 v I),  v = 1 or log v = range * tanh(raw);
fixed Brownian-bridge backward policy
    p_B(x_{i-1} | x_i) = N((t_{i-1}/t_i) x_i, (t_{i-1}/t_i) sigma2 dt I),  log p_B = 0 for i = 1.

`DiffusionRollout.forward` samples trajectories from x_0 = 0 (training rollouts: sampling with
detached mean and variance, log p_F with gradient at the realised states; `reparametrise=True`
for PIS: gradients through the simulation and log R). `DiffusionRollout.backward` draws the whole
Brownian bridge from 0 to x_1 at once and evaluates log p_F of every transition.

Two paths with equal outputs for equal noise (`vectorize`): `loop` keeps a graph per step;
`batched` rolls out without gradient, then evaluates log p_F of all T transitions in one network
call over B*T states. grad log R (Langevin policies) is computed once per state and reused.

Noise: `RankNoise` draws standard normals (and uniforms, for MALA) for the global batch from the
run's generator and keeps this process's rows, so N ranks reproduce one process.
"""

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    checked,
)


@dataclass
class Trajectories:
    states: torch.Tensor  # [B, T+1, d], states[:, 0] = 0
    log_pf: torch.Tensor  # [B, T]
    log_pb: torch.Tensor  # [B, T], log_pb[:, 0] = 0
    log_r: torch.Tensor  # [B], log R(x_1); with gradient only for reparametrised rollouts
    log_f: torch.Tensor | None = None  # [B, T+1] with a flow net; log_f[:, T] = log_r (detached)

    def terms(self) -> dict:
        """The objective's inputs: log_pf, log_pb, log_r, log_f."""
        return {"log_pf": self.log_pf, "log_pb": self.log_pb, "log_r": self.log_r, "log_f": self.log_f}


class RankNoise:
    """Standard normals for a global batch of `global_batch` rows, drawn from `generator`; this
    process keeps its rows: rank r of world_size W holds rows r, r + W, ... (as DistributedSampler),
    or whatever `select` ([global, ...] -> [batch, ...]) picks. Draws are made on the generator's
    device and moved to `device`."""

    @checked
    def __init__(
        self,
        generator: torch.Generator,
        global_batch: PositiveInt,
        rank: NonNegativeInt = 0,
        world_size: PositiveInt = 1,
        select: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if rank >= world_size:
            raise ArgumentError("rank", f"must be < world_size ({world_size}), got {rank}")
        self.generator, self.global_batch = generator, global_batch
        self.select = select if select is not None else (lambda t: t[rank::world_size])
        self.batch = self.select(torch.empty(self.global_batch, 0)).shape[0]

    def normal(self, dim: int, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
        z = torch.randn(self.global_batch, dim, generator=self.generator, device=self.generator.device, dtype=dtype)
        return self.select(z).to(device if device is not None else z.device)  # [batch, dim]

    def uniform(self, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
        """U(0, 1) numbers for the global batch, this process's rows: [batch]."""
        u = torch.rand(self.global_batch, generator=self.generator, device=self.generator.device, dtype=dtype)
        return self.select(u).to(device if device is not None else u.device)  # [batch]


class Exploration:
    """Exploration std eps(step): factor * max(0, 1 - step / decay_steps), or the constant factor
    when decay_steps is None. Used only when sampling training trajectories."""

    @checked
    def __init__(self, factor: NonNegativeFloat = 0.0, decay_steps: PositiveInt | None = 5000):
        self.factor, self.decay_steps = float(factor), decay_steps

    def __call__(self, step: int) -> float:
        if self.decay_steps is None:
            return self.factor
        return self.factor * max(0.0, 1.0 - step / self.decay_steps)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, diag(exp(log_var))), summed over the last dim: [..., d] -> [...]. A float
    log_var is one variance for every entry (no [..., d] tensor of it is made)."""
    return residual_log_prob(x - mean, log_var)


def residual_log_prob(resid: torch.Tensor, log_var: torch.Tensor | float) -> torch.Tensor:
    """log N(resid; 0, diag(exp(log_var))), summed over the last dim: [..., d] -> [...]."""
    if isinstance(log_var, float):
        d = resid.shape[-1]
        return -0.5 * (d * (math.log(2 * math.pi) + log_var) + resid.square().sum(-1) * math.exp(-log_var))
    return -0.5 * (math.log(2 * math.pi) + log_var + resid**2 * torch.exp(-log_var)).sum(-1)


def bridge_log_pb(states: torch.Tensor, sigma2: float) -> torch.Tensor:
    """log p_B of every transition of [B, T+1, d] states under the discretised Brownian bridge:
    transition i (x_i -> x_{i+1}) has log N(x_i; (i/(i+1)) x_{i+1}, (i/(i+1)) sigma2 dt I); 0 for i = 0."""
    B, T, d = states.shape[0], states.shape[1] - 1, states.shape[2]
    i = torch.arange(1, T, device=states.device, dtype=states.dtype)  # [T-1]
    ratio = i / (i + 1)
    log_var = torch.log(ratio * (sigma2 / T))  # one variance per transition [T-1]
    sq = (states[:, 1:T] - ratio[None, :, None] * states[:, 2:]).square().sum(-1)  # [B, T-1]
    rest = -0.5 * (d * (math.log(2 * math.pi) + log_var) + sq * torch.exp(-log_var))
    return torch.cat([rest.new_zeros(B, 1), rest], dim=1)  # [B, T]


def bridge_path(x1: torch.Tensor, T: int, sigma2: float, noise: RankNoise) -> torch.Tensor:
    """One exact draw of the Brownian bridge (variance sigma2 per unit time) from x_0 = 0 to x_1 on
    the grid t_k = k/T: B_k = W_k - t_k (W_1 - x_1). [B, d] -> [B, T+1, d], no gradient; the ends
    are exactly 0 and x_1. Marginals N(t x_1, sigma2 t (1 - t) I)."""
    x1 = x1.detach()
    std = math.sqrt(sigma2 / T)
    steps = torch.stack([noise.normal(x1.shape[-1], x1.dtype, x1.device) for _ in range(T)], dim=1)  # [B, T, d]
    w = torch.cat([x1.new_zeros(x1.shape[0], 1, x1.shape[1]), std * steps.cumsum(1)], dim=1)  # [B, T+1, d]
    t = torch.arange(T + 1, device=x1.device, dtype=x1.dtype)[None, :, None] / T
    path = w - t * (w[:, -1:] - x1[:, None])
    path[:, 0], path[:, -1] = 0.0, x1
    return path


def _std(log_var: torch.Tensor | float, exploration: float) -> torch.Tensor | float:
    """The sampling std: sqrt(exp(log_var) + exploration^2)."""
    if isinstance(log_var, float):
        return math.sqrt(math.exp(log_var) + exploration**2)
    return torch.exp(0.5 * log_var) if exploration == 0 else torch.sqrt(torch.exp(log_var) + exploration**2)


def _detach(v: torch.Tensor | float) -> torch.Tensor | float:
    return v.detach() if isinstance(v, torch.Tensor) else v


def _param(module: nn.Module) -> torch.Tensor | None:
    return next(module.parameters(), None)


class DiffusionRollout:
    """Trajectories of a Gaussian diffusion sampler with a fixed Brownian-bridge p_B.

    T: steps; sigma2: diffusion variance per unit time; learn_variance: v = exp(log_var_range *
    tanh(raw)) instead of 1; vectorize: auto | true | false: `batched` or `loop` log p_F (auto =
    batched, except reparametrised rollouts, which need the loop).

    policy(x [..., d], t, grad_log_r [..., d] | None) -> [..., 2d] with attribute needs_grad;
    flow(x, t, log_r | None) -> [...] with attribute uses_log_r; energy: dim, log_reward, grad_log_reward.
    t broadcasts against x's leading dims: [1] for one step of a [B, d] batch, the grid [T] for
    [B, T, d] states, so time features are computed once per grid time, not once per state.
    """

    @checked
    def __init__(
        self,
        T: PositiveInt = 100,
        sigma2: PositiveFloat = 1.0,
        learn_variance: bool = False,
        log_var_range: PositiveFloat = 4.0,
        vectorize: Literal["auto", "true", "false", True, False] = "auto",
    ):
        mode = str(vectorize).lower()
        self.T, self.sigma2, self.dt = T, float(sigma2), 1.0 / T
        self.learn_variance, self.log_var_range, self.vectorize = bool(learn_variance), float(log_var_range), mode

    # ----- policy ---------------------------------------------------------------------------
    def check(self, reparametrise: bool) -> None:
        """ArgumentError('vectorize') if this rollout cannot serve the objective (batched + reparametrised)."""
        if reparametrise and self.vectorize == "true":
            raise ArgumentError(
                "vectorize",
                "true needs a no-grad rollout; a reparametrised objective (PIS) "
                "differentiates through the simulation: use auto or false",
            )

    def batched(self, reparametrise: bool = False) -> bool:
        self.check(reparametrise)
        return self.vectorize != "false" and not reparametrise

    def drift_and_log_var(self, out: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Policy output [..., 2d] (or the drift alone [..., d] when the variance is not learned) ->
        u [..., d] and the step's log variance log(dt sigma2 v): [..., d], or one float when the
        variance is not learned."""
        u = out if out.shape[-1] == d else out[..., :d]
        log_var = math.log(self.dt * self.sigma2)
        if self.learn_variance:
            log_var = self.log_var_range * torch.tanh(out[..., d:]) + log_var
        return u, log_var

    def step_params(self, out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Policy output at x [..., d] -> the step's mean x + dt u and log variance (drift_and_log_var)."""
        u, log_var = self.drift_and_log_var(out, x.shape[-1])
        return x + self.dt * u, log_var

    def increment_log_prob(self, step: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p_F of transitions from their increments x_{i+1} - x_i [..., d] and the policy's output
        there: gaussian_log_prob(x_{i+1}, *step_params(out, x_i)), with the residual step - dt u. -> [...]."""
        u, log_var = self.drift_and_log_var(out, step.shape[-1])
        return residual_log_prob(step - self.dt * u, log_var)

    def time(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """t_i as a [1] tensor (broadcasts over a batch)."""
        return torch.full((1,), i * self.dt, dtype=like.dtype, device=like.device)

    def grid(self, like: torch.Tensor) -> torch.Tensor:
        """t_0 ... t_{T-1}: [T]."""
        return torch.arange(self.T, dtype=like.dtype, device=like.device) * self.dt

    @staticmethod
    def _grad(policy, energy, x: torch.Tensor) -> torch.Tensor | None:
        """grad log R at x [N, d] for a Langevin policy (detached), else None."""
        if not policy.needs_grad:
            return None
        with torch.enable_grad():  # energies may differentiate log R themselves
            return energy.grad_log_reward(x.detach()).detach()

    def log_pf(self, policy, states: torch.Tensor, grads: torch.Tensor | None, batched: bool) -> torch.Tensor:
        """log p_F of every transition of [B, T+1, d] states, grads [B, T, d] (Langevin) or None;
        one network call over the [B, T, d] states with the time grid [T] (batched) or one per step
        (loop). -> [B, T]."""
        if batched:
            x = states[:, :-1]
            mean, log_var = self.step_params(policy(x, self.grid(x), grads), x)
            return gaussian_log_prob(states[:, 1:], mean, log_var)
        out = []
        for i in range(self.T):
            x = states[:, i]
            mean, log_var = self.step_params(policy(x, self.time(i, x), None if grads is None else grads[:, i]), x)
            out.append(gaussian_log_prob(states[:, i + 1], mean, log_var))
        return torch.stack(out, dim=1)

    def log_flow(self, flow, energy, states: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
        """[B, T+1]: flow at states 0..T-1 (one call, detached states), log R(x_1) at T."""
        B, d = states.shape[0], states.shape[-1]
        x = states[:, :-1].detach()
        lr = energy.log_reward(x.reshape(B * self.T, d)).detach().view(B, self.T) if flow.uses_log_r else None
        return torch.cat([flow(x, self.grid(x), lr), log_r.detach()[:, None]], dim=1)

    # ----- rollouts -------------------------------------------------------------------------
    def forward(
        self, policy, energy, noise: RankNoise, flow=None, exploration: float = 0.0, reparametrise: bool = False
    ) -> Trajectories:
        """Trajectories from x_0 = 0 for noise.batch rows. exploration: std eps added in variance to
        every sampling step (dt sigma2 v + eps^2); log p_F stays the policy's. reparametrise: PIS
        (x_{i+1} = mean + std * xi with gradients; log R with gradient)."""
        if not exploration >= 0:
            raise ArgumentError("exploration", f"must be >= 0, got {exploration!r}")
        batched = self.batched(reparametrise)
        p = _param(policy)
        dtype = p.dtype if p is not None else torch.get_default_dtype()
        device = p.device if p is not None else noise.generator.device
        d, B = energy.dim, noise.batch
        x = torch.zeros(B, d, dtype=dtype, device=device)
        states, grads, log_pf = [x], [], []
        record = not batched or not torch.is_grad_enabled()  # log p_F from the rollout itself
        # training with a batched log p_F: the policy records its activations, log p_F replays them
        # (a policy compiled in place, `model.compile=true`, keeps its compiled batched forward instead)
        replays = hasattr(policy, "record") and getattr(policy, "_compiled_call_impl", None) is None
        tape = policy.new_tape(self.grid(x), B, x) if not record and replays else None
        with torch.no_grad() if batched else nullcontext():
            for i in range(self.T):
                g = self._grad(policy, energy, x)
                grads.append(g)
                out = policy(x, self.time(i, x), g) if tape is None else policy.record(x, g, tape, i)
                mean, log_var = self.step_params(out, x)
                std = _std(log_var, exploration)
                xi = noise.normal(d, dtype, device)
                x_next = mean + std * xi if reparametrise else mean.detach() + _detach(std) * xi
                if record:
                    log_pf.append(gaussian_log_prob(x_next, mean, log_var))
                states.append(x_next)
                x = x_next
        if tape is not None:  # time-major, as the tape: log p_F from the increments x_{i+1} - x_i
            path = torch.stack(states)  # [T+1, B, d]
            states = path.transpose(0, 1).contiguous()  # [B, T+1, d]
            grads_tm = torch.stack(grads) if policy.needs_grad else None  # [T, B, d]
            out = policy.replay(grads_tm, tape, drift_only=not self.learn_variance)  # [T, B, 2d | d]
            log_pf = self.increment_log_prob(path[1:] - path[:-1], out).t()  # [B, T]
            return self._finish(states, log_pf, energy.log_reward(x).detach(), flow, energy)
        states = torch.stack(states, dim=1)  # [B, T+1, d]
        if record:
            log_pf = torch.stack(log_pf, dim=1)
        else:
            log_pf = self.log_pf(policy, states, torch.stack(grads, dim=1) if policy.needs_grad else None, batched=True)
        log_r = energy.log_reward(x)
        log_r = log_r if reparametrise else log_r.detach()
        return self._finish(states, log_pf, log_r, flow, energy)

    def backward(self, policy, energy, x1: torch.Tensor, noise: RankNoise, flow=None) -> Trajectories:
        """Trajectories ending at x1 [B, d] (B = noise.batch): one exact Brownian-bridge draw from
        0 to x1, then log p_F of every transition (no gradient through the states)."""
        if x1.shape[0] != noise.batch:
            raise ValueError(f"x1 has {x1.shape[0]} rows, noise draws {noise.batch}")
        states = bridge_path(x1, self.T, self.sigma2, noise)
        B, d = states.shape[0], states.shape[-1]
        grads = None
        if policy.needs_grad:  # one energy call over all B*T states
            grads = self._grad(policy, energy, states[:, :-1].reshape(B * self.T, d)).view(B, self.T, d)
        log_pf = self.log_pf(policy, states, grads, batched=self.batched())
        return self._finish(states, log_pf, energy.log_reward(x1).detach(), flow, energy)

    def _finish(self, states, log_pf, log_r, flow, energy) -> Trajectories:
        log_f = self.log_flow(flow, energy, states, log_r) if flow is not None else None
        return Trajectories(states, log_pf, bridge_log_pb(states, self.sigma2), log_r, log_f)
