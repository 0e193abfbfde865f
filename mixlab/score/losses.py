"""Denoising score matching losses: callables returning one loss per sample.

Both take (model, x0, sigma, noise) with x0, noise [B, C, H, W] and sigma [B], build
x_sigma = x0 + sigma * noise and return [B] ([K, B] when `model` is K stacked experts). With eps-prediction the two differ only in the
weighting of the denoiser error ||D - x0||^2: 1/sigma^2 (seed) vs 1/sigma^2 + 1/sigma_data^2 (EDM).
"""

import torch
from torch import nn

from mixlab.core.tensors import per_sample


def per_sample_mean(err: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Mean over the image dims of x0: [B, C, H, W] -> [B], and [K, B, C, H, W] -> [K, B] for
    K stacked experts evaluated on the same batch."""
    return err.flatten(start_dim=err.dim() - (x0.dim() - 1)).mean(-1)


class EpsilonLoss:
    """The seed: mean over pixels of (eps_hat - eps)^2."""

    def __call__(self, model: nn.Module, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = x0 + per_sample(sigma, x0) * noise
        return per_sample_mean((model(x, sigma) - noise).pow(2), x0)


class EDMLoss:
    """EDM: lambda(sigma) * mean over pixels of (D(x_sigma) - x0)^2, lambda = (s^2 + sd^2)/(s sd)^2."""

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = float(sigma_data)

    def __call__(self, model: nn.Module, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = x0 + per_sample(sigma, x0) * noise
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        return weight * per_sample_mean((model.denoise(x, sigma) - x0).pow(2), x0)
