"""Local search: parallel MALA chains in the target space (Sendera et al. 2024, Sec. 4 / Alg. 2).

One call runs `steps` Metropolis-adjusted Langevin steps on a batch of chains,

    x' = x + eta grad log R(x) + sqrt(2 eta) xi,   xi ~ N(0, I)
    log alpha = log R(x') - log R(x) + log q(x|x') - log q(x'|x),
    log q(b|a) = -|b - a - eta grad log R(a)|^2 / (4 eta),

accepts where u < min(1, e^{log alpha}), and returns the accepted proposals of the steps after
burn-in (step index >= burn_in) with their log R. log R and its gradient are cached per chain,
so each step evaluates the energy once, at the proposal. A proposal whose log R, gradient or
log alpha is not finite is rejected (its NaN gradient never enters the chain).

Step size: `AdaptiveStepSize` multiplies eta by `up` when the acceptance rate of the latest
window of steps exceeds `target`, else by `down`, after every step. Presets: `PaperStepSize`
(Alg. 2: window 1, x1.1 / x0.9), `ReferenceStepSize` (the reference code: windows of 5 steps,
x1.01 / x0.99), `FixedStepSize`. Under DDP the caller passes `reduce` (e.g. an all-reduce sum
of a [2] tensor) so every rank sees the global (accepted, proposed) counts and keeps the same eta.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    UnitFloat,
    checked,
)

OPTIMAL_ACCEPTANCE = 0.574  # high-dimensional MALA optimum (Roberts & Rosenthal 1998)


class AdaptiveStepSize:
    """eta <- eta * (up if rate > target else down) after every step; `rate` is the acceptance of
    the latest completed window (windows start at steps 0, 1, 1 + window, ...: the reference's
    `i % window == 0` refresh; with window 1 it is the step's own rate)."""

    @checked
    def __init__(
        self, up: PositiveFloat = 1.1, down: PositiveFloat = 0.9, target: UnitFloat = OPTIMAL_ACCEPTANCE, window: PositiveInt = 1
    ):
        self.up, self.down, self.target, self.window = float(up), float(down), float(target), window

    def refreshes(self, step: int) -> bool:
        """Whether the window rate is recomputed after `step` (0-based)."""
        return step % self.window == 0

    def __call__(self, eta: float, rate: float) -> float:
        return eta * (self.up if rate > self.target else self.down)


class PaperStepSize(AdaptiveStepSize):
    """The paper's Alg. 2: x1.1 if the step's acceptance > 0.574 else x0.9."""

    @checked
    def __init__(self, target: UnitFloat = OPTIMAL_ACCEPTANCE):
        super().__init__(1.1, 0.9, target, window=1)


class ReferenceStepSize(AdaptiveStepSize):
    """The reference code (langevin.py): acceptance over windows of 5 steps, x1.01 / x0.99."""

    @checked
    def __init__(self, target: UnitFloat = OPTIMAL_ACCEPTANCE):
        super().__init__(1.01, 0.99, target, window=5)


class FixedStepSize(AdaptiveStepSize):
    """No adaptation (the ablation's fixed eta)."""

    def __init__(self):
        super().__init__(1.0, 1.0, OPTIMAL_ACCEPTANCE, window=1)


@dataclass
class MALAResult:
    samples: torch.Tensor  # [M,d] accepted proposals of the post-burn-in steps (M <= B*(steps-burn_in))
    log_r: torch.Tensor  # [M]
    acceptance: float  # accepted / proposed over all steps (global counts when `reduce` is given)
    step_size: float  # eta after the last step (start the next call from it)
    accepted: int
    proposed: int
    final: torch.Tensor  # [B,d] the chains' last states
    final_log_r: torch.Tensor  # [B]
    step_of: torch.Tensor | None = None  # [M] step index of each kept sample
    row_of: torch.Tensor | None = None  # [M] chain (row of x) of each kept sample: with step_of, the
    # samples are ordered by (step, row); under DDP the caller maps rows to global rows to merge ranks


def _log_q(to: torch.Tensor, frm: torch.Tensor, grad_frm: torch.Tensor, eta: float) -> torch.Tensor:
    """log q(to | frm) up to a constant shared by both directions: -|to - frm - eta g|^2 / (4 eta)."""
    return -((to - frm - eta * grad_frm) ** 2).sum(1) / (4 * eta)


@torch.no_grad()
@checked
def mala(
    energy,
    x: torch.Tensor,
    steps: PositiveInt = 200,
    burn_in: NonNegativeInt = 100,
    step_size: PositiveFloat = 0.01,
    rule: AdaptiveStepSize | None = None,
    generator: torch.Generator | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    beta: PositiveFloat = 1.0,
    noise=None,
) -> MALAResult:
    """Run `steps` parallel MALA steps from x [B,d] on `energy` (an object with
    `log_reward_and_grad(x) -> ([B], [B,d])`); target R^beta (beta = inverse temperature).

    Random numbers per step, in this order: xi = randn([B,d]), u = rand([B]) (from `generator`),
    or from `noise` (an object with normal(d, dtype, device) -> [B,d] and uniform(dtype, device)
    -> [B], e.g. a RankNoise: this rank's rows of draws for the global batch of chains).
    `reduce` maps this rank's [accepted, proposed] (float64 [2]) to the global counts."""
    if burn_in >= steps:
        raise ArgumentError("burn_in", f"must be < steps ({steps}), got {burn_in}")
    rule = PaperStepSize() if rule is None else rule

    def evaluate(z):
        log_r, grad = energy.log_reward_and_grad(z)
        return beta * log_r, beta * grad

    x = x.detach().clone()
    log_r, grad = evaluate(x)
    eta, rate = float(step_size), 0.0
    window = torch.zeros(2, dtype=torch.float64, device=x.device)  # [accepted, proposed] since refresh
    total = torch.zeros(2, dtype=torch.float64, device=x.device)
    kept_x, kept_log_r, kept_step, kept_row = [], [], [], []
    for step in range(steps):
        if noise is None:
            xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        else:
            xi, u = noise.normal(x.shape[1], x.dtype, x.device), noise.uniform(x.dtype, x.device)
        prop = x + eta * grad + (2 * eta) ** 0.5 * xi
        prop_log_r, prop_grad = evaluate(prop)
        log_alpha = prop_log_r - log_r + _log_q(x, prop, prop_grad, eta) - _log_q(prop, x, grad, eta)
        ok = torch.isfinite(log_alpha) & torch.isfinite(prop_grad).all(1)
        accept = ok & (torch.log(u) < log_alpha)
        x = torch.where(accept[:, None], prop, x)
        log_r = torch.where(accept, prop_log_r, log_r)
        grad = torch.where(accept[:, None], prop_grad, grad)
        if step >= burn_in:
            rows = accept.nonzero().squeeze(1)
            kept_x.append(prop[rows])
            kept_log_r.append(prop_log_r[rows] / beta)
            kept_row.append(rows)
            kept_step.append(torch.full_like(rows, step))
        counts = torch.stack([accept.sum(), torch.tensor(accept.numel(), device=x.device)]).to(torch.float64)
        counts = reduce(counts) if reduce is not None else counts
        window += counts
        total += counts
        if rule.refreshes(step):
            rate = float(window[0] / window[1].clamp_min(1))
            window.zero_()
        eta = rule(eta, rate)
    accepted, proposed = int(total[0]), int(total[1])
    return MALAResult(
        torch.cat(kept_x),
        torch.cat(kept_log_r),
        accepted / max(proposed, 1),
        eta,
        accepted,
        proposed,
        x,
        log_r / beta,
        torch.cat(kept_step),
        torch.cat(kept_row),
    )
