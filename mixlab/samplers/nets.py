"""Networks of the diffusion samplers (PIS architecture, Sendera et al. 2024, reference §2).

All are plain nn.Modules, tensor in / tensor out; t is the raw time in [0, 1] as a [N] tensor.

- `PISPolicy(x, t) -> [N, 2d]`: [u | raw log-variance] of the forward policy (no Langevin term;
  see mixlab.samplers.langevin for the Langevin parametrisation).
- `LangevinScale(t) -> [N, 1] or [N, d]`: the scale s(t) of the Langevin term.
- `FlowNet(x, t) -> [N]`: log F(x, t) for DB / SubTB.
- `ForwardLookingFlow(x, t, log_r) -> [N]`: FL-SubTB's flow, NN(x, t) plus a reference term.

Policies and flows share a small call protocol that the rollout relies on:
`policy.needs_grad` (does forward take grad log R?) and `flow.uses_log_r` (does forward take log R?).
"""

import math

import torch
from torch import nn

from mixlab.core.validate import NonNegativeInt, PositiveFloat, PositiveInt, checked


class FourierFeatures(nn.Module):
    """[sin(f t + phi), cos(f t + phi)] with f = linspace(f_min, f_max, harmonics) and a learned
    phase phi (randn init): [N] -> [N, 2 * harmonics]."""

    @checked
    def __init__(self, harmonics: PositiveInt = 64, f_min: float = 0.1, f_max: float = 100.0):
        super().__init__()
        self.register_buffer("freqs", torch.linspace(f_min, f_max, harmonics))
        self.phase = nn.Parameter(torch.randn(harmonics))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t[:, None] * self.freqs + self.phase  # [N, h]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)  # [N, 2h]


def time_embedding(harmonics: int = 64, hidden: int = 64, out: int = 64) -> nn.Sequential:
    """PIS time embedding: Fourier features -> Linear(2h, hidden) -> GELU -> Linear(hidden, out)."""
    return nn.Sequential(FourierFeatures(harmonics), nn.Linear(2 * harmonics, hidden), nn.GELU(), nn.Linear(hidden, out))


def joint_mlp(hidden: int, out: int, num_layers: int = 2) -> nn.Sequential:
    """(s_emb + t_emb) -> GELU -> num_layers x [Linear, GELU] -> Linear(hidden, out)."""
    layers: list[nn.Module] = [nn.GELU()]
    for _ in range(num_layers):
        layers += [nn.Linear(hidden, hidden), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(hidden, out))


class PISPolicy(nn.Module):
    """Forward-policy network: [N, d], [N] -> [N, 2d] = [u | raw log-variance], clipped to
    [-clip, clip]. The last layer starts at zero (zero_init), so the initial drift is 0."""

    needs_grad = False

    @checked
    def __init__(
        self,
        dim: PositiveInt,
        hidden: PositiveInt = 64,
        harmonics: PositiveInt = 64,
        num_layers: NonNegativeInt = 2,
        zero_init: bool = True,
        clip: PositiveFloat = 1e4,
    ):
        super().__init__()
        self.dim, self.clip = dim, float(clip)
        self.t_embed = time_embedding(harmonics, hidden, hidden)
        self.s_embed = nn.Linear(dim, hidden)
        self.joint = joint_mlp(hidden, 2 * dim, num_layers)
        if zero_init:
            nn.init.zeros_(self.joint[-1].weight)
            nn.init.zeros_(self.joint[-1].bias)

    def unclipped(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.joint(self.s_embed(x) + self.t_embed(t))  # [N, 2d]

    def forward(self, x: torch.Tensor, t: torch.Tensor, grad_log_r: torch.Tensor | None = None) -> torch.Tensor:
        return self.unclipped(x, t).clamp(-self.clip, self.clip)  # [N, 2d]


class LangevinScale(nn.Module):
    """s(t) of the Langevin parametrisation: its own Fourier time features -> Linear(2h, hidden)
    -> (num_layers - 1) x [GELU, Linear] -> GELU -> Linear(hidden, 1 or d); the last layer has
    zero weights and bias `init` (0.01), so s(t) = init at the start. [N] -> [N, 1] or [N, d]."""

    @checked
    def __init__(
        self,
        dim: PositiveInt = 1,
        per_dimension: bool = False,
        hidden: PositiveInt = 64,
        harmonics: PositiveInt = 64,
        num_layers: PositiveInt = 3,
        init: float = 0.01,
    ):
        super().__init__()
        layers: list[nn.Module] = [FourierFeatures(harmonics), nn.Linear(2 * harmonics, hidden)]
        for _ in range(num_layers - 1):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        layers += [nn.GELU(), nn.Linear(hidden, dim if per_dimension else 1)]
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, init)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t)  # [N, 1] or [N, d]


class FlowNet(nn.Module):
    """State-conditional log-flow for DB / SubTB: [N, d], [N] -> [N]. Same structure as the
    policy (own state/time embeddings, joint MLP with one output), default init."""

    uses_log_r = False

    @checked
    def __init__(self, dim: PositiveInt, hidden: PositiveInt = 64, harmonics: PositiveInt = 64, num_layers: NonNegativeInt = 2):
        super().__init__()
        self.t_embed = time_embedding(harmonics, hidden, hidden)
        self.s_embed = nn.Linear(dim, hidden)
        self.joint = joint_mlp(hidden, 1, num_layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, log_r: torch.Tensor | None = None) -> torch.Tensor:
        return self.joint(self.s_embed(x) + self.t_embed(t)).squeeze(-1)  # [N]


def reference_log_prob(x: torch.Tensor, t: torch.Tensor, sigma2: float, dt: float) -> torch.Tensor:
    """log N(x; 0, sigma2 * max(t, dt) I): the marginal of the reference (driftless) process at t,
    with t = 0 read as the first grid time dt (max(i, 1) dt). [N, d], [N] -> [N]."""
    var = sigma2 * t.clamp(min=dt)  # [N]
    d = x.shape[-1]
    return -0.5 * (d * torch.log(2 * math.pi * var) + (x * x).sum(-1) / var)


class ForwardLookingFlow(nn.Module):
    """FL-SubTB flow: log F(x, t) = NN(x, t) + (1 - t) log N(x; 0, sigma2 max(t, 1/T) I) + t log R(x).
    `sigma2` and `T` must be the sampler's (its config interpolates them). [N, d], [N], [N] -> [N]."""

    uses_log_r = True

    @checked
    def __init__(self, net: nn.Module, sigma2: PositiveFloat, T: PositiveInt):
        super().__init__()
        self.net, self.sigma2, self.T = net, float(sigma2), T

    def forward(self, x: torch.Tensor, t: torch.Tensor, log_r: torch.Tensor | None = None) -> torch.Tensor:
        if log_r is None:
            raise ValueError("ForwardLookingFlow needs log R(x) at every state")
        ref = reference_log_prob(x, t, self.sigma2, 1.0 / self.T)
        return self.net(x, t) + (1 - t) * ref + t * log_r  # [N]


@checked
def forward_looking_flow(
    dim: PositiveInt,
    sigma2: PositiveFloat,
    T: PositiveInt,
    hidden: PositiveInt = 64,
    harmonics: PositiveInt = 64,
    num_layers: NonNegativeInt = 2,
) -> ForwardLookingFlow:
    """FL-SubTB's flow on a fresh FlowNet (config: `_partial_: true`; the system passes the energy's dim)."""
    return ForwardLookingFlow(FlowNet(dim, hidden, harmonics, num_layers), sigma2, T)
