"""Langevin parametrisation (LP) of the forward policy (Sendera et al. 2024, reference §2):

    u(x, t) = clip(NN(x, t) + s(t) * clip(grad log R(x), +-grad_clip), +-clip)

grad log R is detached, NaN -> 0, clipped to +-100; the full 2d output ([u | raw log-variance]) is
then clipped to +-1e4 as without LP. The rollout computes grad log R once per state and passes it
in (`needs_grad = True`).
"""

import torch
from torch import nn

from mixlab.core.validate import NonNegativeInt, PositiveFloat, PositiveInt, checked
from mixlab.samplers.nets import LangevinScale, PISPolicy


def clean_grad(grad: torch.Tensor, clip: float = 100.0) -> torch.Tensor:
    """grad log R as the Langevin term uses it: detached, NaN -> 0 (inf -> large finite), clipped."""
    return torch.nan_to_num(grad.detach(), nan=0.0).clamp(-clip, clip)


def langevin_output(out: torch.Tensor, scale: torch.Tensor, grad: torch.Tensor, grad_clip: float, clip: float) -> torch.Tensor:
    """[u | raw] ([N, 2d]) with u += scale * clean_grad(grad), then clipped to +-clip."""
    d = grad.shape[-1]
    drift = out[:, :d] + scale * clean_grad(grad, grad_clip)  # [N, d]
    return torch.cat([drift, out[:, d:]], dim=-1).clamp(-clip, clip)  # [N, 2d]


class LangevinPolicy(nn.Module):
    """A PIS policy with the Langevin term: [N, d], [N], grad log R [N, d] -> [N, 2d]."""

    needs_grad = True

    @checked
    def __init__(self, net: PISPolicy, scale: LangevinScale, grad_clip: PositiveFloat = 100.0):
        super().__init__()
        self.net, self.scale, self.grad_clip = net, scale, float(grad_clip)
        self.dim = net.dim

    def forward(self, x: torch.Tensor, t: torch.Tensor, grad_log_r: torch.Tensor | None = None) -> torch.Tensor:
        if grad_log_r is None:
            raise ValueError("LangevinPolicy needs grad log R at x")
        return langevin_output(self.net.unclipped(x, t), self.scale(t), grad_log_r, self.grad_clip, self.net.clip)


@checked
def langevin_policy(
    dim: PositiveInt,
    hidden: PositiveInt = 64,
    harmonics: PositiveInt = 64,
    num_layers: NonNegativeInt = 2,
    zero_init: bool = True,
    clip: PositiveFloat = 1e4,
    per_dimension: bool = False,
    scale_layers: PositiveInt = 3,
    scale_init: float = 0.01,
    grad_clip: PositiveFloat = 100.0,
) -> LangevinPolicy:
    """A LangevinPolicy on a fresh PISPolicy and LangevinScale (config: `_partial_: true`; the
    system passes the energy's dim)."""
    net = PISPolicy(dim, hidden, harmonics, num_layers, zero_init, clip)
    scale = LangevinScale(dim, per_dimension, hidden, harmonics, scale_layers, scale_init)
    return LangevinPolicy(net, scale, grad_clip)
