"""Probability-flow ODE samplers in sigma: dx/dsigma = eps_hat(x, sigma).

`eps_fn(x [B,...], sigma [B]) -> eps_hat` is any callable (a precond module, an expert router).
Deterministic given x_init; the initial state is sigma_max * z as in the seed.
"""

import abc
from collections.abc import Callable

import torch

from mixlab.core.validate import PositiveInt, checked
from mixlab.score.schedule import KarrasGrid, SigmaGrid

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _sig(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.expand(x.shape[0])


@torch.no_grad()
def euler(eps_fn: EpsFn, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x <- x + (sigma_{i+1} - sigma_i) eps_hat(x, sigma_i). One evaluation per step."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * eps_fn(x, _sig(s, x))
    return x


@torch.no_grad()
def heun(eps_fn: EpsFn, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Heun's 2nd-order method; the last step into sigma = 0 is plain Euler (2N - 1 evaluations)."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = eps_fn(x, _sig(s, x))
        x_pred = x + (s_next - s) * d
        if s_next > 0:
            d = (d + eps_fn(x_pred, _sig(s_next, x))) / 2
            x_pred = x + (s_next - s) * d
        x = x_pred
    return x


class Solver(abc.ABC):
    """A PF-ODE solver: `solver(eps_fn, x_init, sigmas)` -> x at the last sigma."""

    name = "solver"

    @abc.abstractmethod
    def __call__(self, eps_fn: EpsFn, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def evaluations(self, steps: int) -> int:
        """Network evaluations for `steps` steps."""


class Euler(Solver):
    """`euler`: one evaluation per step."""

    name = "euler"

    def __call__(self, eps_fn, x, sigmas):
        return euler(eps_fn, x, sigmas)

    def evaluations(self, steps: int) -> int:
        return steps


class Heun(Solver):
    """`heun`: 2 * steps - 1 evaluations (no corrector on the final step)."""

    name = "heun"

    def __call__(self, eps_fn, x, sigmas):
        return heun(eps_fn, x, sigmas)

    def evaluations(self, steps: int) -> int:
        return 2 * steps - 1


class ODESampling:
    """How a score model samples by default: solver, number of steps, sigma grid."""

    @checked
    def __init__(self, solver: Solver | None = None, steps: PositiveInt = 20, grid: SigmaGrid | None = None):
        self.solver, self.steps, self.grid = solver or Heun(), steps, grid or KarrasGrid()

    def options(self) -> dict:
        """The keywords of `ScoreDiffusion.sample`."""
        return {"solver": self.solver, "steps": self.steps, "grid": self.grid}


def sample(
    eps_fn: EpsFn,
    shape: tuple[int, ...],
    sigmas: torch.Tensor,
    solver: Solver,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    clamp: bool = True,
) -> torch.Tensor:
    """Draw x_T = sigma_max * z and integrate the PF-ODE down the grid; clamp to [-1, 1]."""
    z = torch.randn(shape, generator=generator, device=device)
    sigmas = sigmas.to(device)
    x = solver(eps_fn, sigmas[0] * z, sigmas)
    return x.clamp(-1, 1) if clamp else x
