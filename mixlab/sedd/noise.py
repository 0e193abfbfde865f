"""SEDD noise schedules: total noise sigma_bar(t) = int_0^t sigma and its rate sigma(t), t in [0, 1].

The forward process at time t is p_{t|0} = exp(sigma_bar(t) Q); training weights the score entropy
by sigma(t) = d sigma_bar / dt, the network is conditioned on sigma_bar (Lou et al. 2024, App. C.1).
"""

import abc
import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import PositiveFloat, checked


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

    @checked
    def __init__(self, sigma_min: PositiveFloat = 1e-4, sigma_max: PositiveFloat = 20.0):
        if not sigma_min < sigma_max:
            raise ArgumentError("sigma_max", f"must exceed sigma_min = {sigma_min}, got {sigma_max}")
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

    @checked
    def __init__(self, eps: Annotated[float, Field(gt=0, lt=1)] = 1e-3):
        self.eps = float(eps)

    def total(self, t: Tensor) -> Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def rate(self, t: Tensor) -> Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)
