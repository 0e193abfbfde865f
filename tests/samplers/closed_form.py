"""Closed-form helpers for the sampler tests: a Gaussian target Z N(mu, s2 I) with the energy
interface (dim, log_reward, grad_log_reward, log_z, sample), its exact DB/SubTB flow, and the
policy that samples it exactly (zero weights, drift bias mu: x_1 = mu + sqrt(s2) W_1)."""

import math

import torch

from mixlab.samplers.nets import PISPolicy


class GaussianTarget:
    """R(x) = Z N(x; mu, s2 I)."""

    def __init__(self, mu, s2: float, log_z: float):
        self.mu = torch.as_tensor(mu, dtype=torch.get_default_dtype())
        self.dim, self.s2, self.log_z = self.mu.numel(), float(s2), float(log_z)

    def log_normal(self, x, mean, var):
        var = torch.as_tensor(var, dtype=x.dtype)
        return -0.5 * (self.dim * torch.log(2 * math.pi * var) + ((x - mean) ** 2).sum(-1) / var)

    def log_reward(self, x):  # [B, d] -> [B]
        return self.log_z + self.log_normal(x, self.mu.to(x), self.s2)

    def grad_log_reward(self, x):  # [B, d] -> [B, d]
        return -(x - self.mu.to(x)) / self.s2

    def sample(self, n, generator=None):
        return self.mu + math.sqrt(self.s2) * torch.randn(n, self.dim, generator=generator)


class ExactFlow(torch.nn.Module):
    """log F_t(x) = log Z + log N(x; t mu, s2 t I), log F_0 = log Z: the flow of the exact sampler."""

    uses_log_r = False

    def __init__(self, target: GaussianTarget):
        super().__init__()
        self.target = target

    def forward(self, x, t, log_r=None):
        tt = t[..., None]
        safe = t.clamp(min=1e-12)
        log_n = self.target.log_normal(x, tt * self.target.mu.to(x), self.target.s2 * safe)
        return torch.where(t > 0, self.target.log_z + log_n, torch.full_like(t, self.target.log_z))


def exact_policy(target: GaussianTarget, **kwargs) -> PISPolicy:
    """PIS policy with zero weights and output bias [mu | 0]: constant drift mu, v = 1."""
    policy = PISPolicy(target.dim, **kwargs)
    with torch.no_grad():
        policy.joint[-1].bias[: target.dim] = target.mu
    return policy


def randomise_last_layer(policy: PISPolicy, seed: int = 0, scale: float = 0.3) -> PISPolicy:
    """Give the zero-initialised last layer random weights so that every parameter gets a gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.joint[-1].parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return policy
