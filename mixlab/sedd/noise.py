"""SEDD noise schedules: total noise sigma_bar(t) = int_0^t sigma and its rate sigma(t), t in [0, 1].

The forward process at time t is p_{t|0} = exp(sigma_bar(t) Q); training weights the score entropy
by sigma(t) = d sigma_bar / dt, the network is conditioned on sigma_bar (Lou et al. 2024, App. C.1).
"""

import abc
import math

import torch
from torch import Tensor

from mixlab.core.errors import ConfigError


class Noise(abc.ABC):
    """`noise(t [B]) -> (sigma_bar [B], sigma [B])`, in t's dtype (pass float64 t for float64 values)."""

    @abc.abstractmethod
    def total(self, t: Tensor) -> Tensor:
        """sigma_bar(t)."""

    @abc.abstractmethod
    def rate(self, t: Tensor) -> Tensor:
        """sigma(t) = d sigma_bar / dt."""

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.total(t), self.rate(t)


class GeometricNoise(Noise):
    """sigma_bar = sigma_min^(1-t) sigma_max^t (uniform graph); sigma_bar(0) = sigma_min, not 0."""

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        if not 0 < sigma_min < sigma_max:
            raise ConfigError("model.noise", f"geometric noise needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_min, self._log_ratio = math.log(sigma_min), math.log(sigma_max / sigma_min)

    def total(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_min + t * self._log_ratio)

    def rate(self, t: Tensor) -> Tensor:
        return self.total(t) * self._log_ratio


class LogLinearNoise(Noise):
    """sigma_bar = -log(1 - (1-eps) t) (absorb): the masked fraction 1 - e^{-sigma_bar} = (1-eps) t.

    sigma_bar(0) = 0 and sigma_bar(1) = -log(eps) (ln 1000 for eps = 1e-3).
    """

    def __init__(self, eps: float = 1e-3):
        if not 0 < eps < 1:
            raise ConfigError("model.noise", f"log-linear noise needs 0 < eps < 1, got {eps}")
        self.eps = float(eps)

    def total(self, t: Tensor) -> Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def rate(self, t: Tensor) -> Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)
