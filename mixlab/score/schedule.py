"""VE noise levels: training-time sigma distributions and sampling-time sigma grids.

VE forward process: x_sigma = x0 + sigma * eps, eps ~ N(0, I).
"""

import abc
import math

import torch

from mixlab.core.validate import PositiveFloat, checked


class LogUniformSigma:
    """sigma = exp(U(ln sigma_min, ln sigma_max)): the seed's training distribution."""

    @checked
    def __init__(self, sigma_min: PositiveFloat = 0.01, sigma_max: PositiveFloat = 80.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def __call__(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=device)
        return torch.exp(math.log(self.sigma_min) + u * (math.log(self.sigma_max) - math.log(self.sigma_min)))


class LogNormalSigma:
    """ln sigma ~ N(p_mean, p_std^2): EDM's training distribution (Karras et al. 2022)."""

    @checked
    def __init__(self, p_mean: float = -1.2, p_std: PositiveFloat = 1.2):
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def __call__(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator, device=device))


def geometric_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The seed's grid: sigma_i = sigma_max^(1-r_i) sigma_min^(r_i), r_i = i/(N-1), then a final 0.

    Returns steps + 1 decreasing values ending in 0.
    """
    r = torch.linspace(0, 1, steps, dtype=torch.float64)
    sig = sigma_max ** (1 - r) * sigma_min**r
    return torch.cat([sig, sig.new_zeros(1)]).float()


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's grid: (sigma_max^(1/rho) + r_i (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0."""
    r = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + r * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)]).float()


class SigmaGrid(abc.ABC):
    """A sampling-time grid: `grid(steps, sigma_min, sigma_max)` -> steps + 1 decreasing sigmas ending in 0."""

    name = "grid"

    @abc.abstractmethod
    def __call__(self, steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor: ...


class GeometricGrid(SigmaGrid):
    """The seed's grid (`geometric_sigmas`)."""

    name = "geometric"

    def __call__(self, steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
        return geometric_sigmas(steps, sigma_min, sigma_max)


class KarrasGrid(SigmaGrid):
    """EDM's grid (`karras_sigmas`) with exponent rho (7 in Karras et al. 2022)."""

    name = "karras"

    @checked
    def __init__(self, rho: PositiveFloat = 7.0):
        self.rho = rho

    def __call__(self, steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
        return karras_sigmas(steps, sigma_min, sigma_max, self.rho)
