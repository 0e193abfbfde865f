"""Parameterisations wrapping a raw net F(x, c_noise). Both expose the same two views:

- forward(x, sigma) -> eps_hat, the PF-ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma
- denoise(x, sigma) -> D(x, sigma), the estimate of x0 (score = (D - x) / sigma^2)

A system takes the class as a partial (conf/model/precond/<name>.yaml, `model/precond=edm`) and
wraps its net: `precond(net)`.
"""

import torch
from torch import nn

from mixlab.core.tensors import per_sample
from mixlab.core.validate import PositiveFloat, checked


class EpsilonPrecond(nn.Module):
    """The seed: the net sees the raw x_sigma and c_noise = ln(sigma)/4 and predicts eps."""

    @checked
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(x, sigma.log() / 4)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - per_sample(sigma, x) * self(x, sigma)


class EDMPrecond(nn.Module):
    """Karras et al. (2022): D = c_skip x + c_out F(c_in x, ln(sigma)/4), unit-variance in/out."""

    @checked
    def __init__(self, net: nn.Module, sigma_data: PositiveFloat = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, float(sigma_data)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s, sd2 = per_sample(sigma, x), self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        return c_skip * x + c_out * self.net(c_in * x, sigma.log() / 4)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x - self.denoise(x, sigma)) / per_sample(sigma, x)
