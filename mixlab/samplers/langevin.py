"""Langevin parametrisation (LP) of the forward policy (Sendera et al. 2024, reference §2):

    u(x, t) = clip(NN(x, t) + s(t) * clip(grad log R(x), +-grad_clip), +-clip)

grad log R is detached, NaN -> 0, clipped to +-100; the full 2d output ([u | raw log-variance]) is
then clipped to +-1e4 as without LP. The rollout computes grad log R once per state and passes it
in (`needs_grad = True`).
"""

import torch
from torch import nn

from mixlab.core.validate import NonNegativeInt, PositiveFloat, PositiveInt, checked
from mixlab.samplers.nets import LangevinScale, PISPolicy, Tape, clip_output


def clean_grad(grad: torch.Tensor, clip: float = 100.0) -> torch.Tensor:
    """grad log R as the Langevin term uses it: detached, NaN -> 0 (inf -> large finite), clipped."""
    return torch.nan_to_num(grad.detach(), nan=0.0).clamp(-clip, clip)


def langevin_output(
    out: torch.Tensor, scale: torch.Tensor, grad: torch.Tensor, grad_clip: float, clip: float, lazy: bool = False
) -> torch.Tensor:
    """[u | raw] ([..., 2d], or u alone [..., d]) with u += scale * clean_grad(grad), then clipped
    to +-clip (lazy: the clamp only when something exceeds clip, see clip_output)."""
    d = grad.shape[-1]
    if out.shape[-1] == d:
        joined = out + scale * clean_grad(grad, grad_clip)
    else:
        drift = out[..., :d] + scale * clean_grad(grad, grad_clip)  # [..., d]
        joined = torch.cat([drift, out[..., d:]], dim=-1)  # [..., 2d]
    return clip_output(joined, clip) if lazy else joined.clamp(-clip, clip)


class LangevinPolicy(nn.Module):
    """A PIS policy with the Langevin term: [..., d], t, grad log R [..., d] -> [..., 2d] (t as in PISPolicy)."""

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

    # one network pass per rollout: see PISPolicy.record / replay
    def new_tape(self, grid: torch.Tensor, batch: int, like: torch.Tensor) -> Tape:
        tape = self.net.new_tape(grid, batch, like)
        with torch.no_grad():
            tape.extra["scale"] = self.scale(grid)  # [T, 1 or d]
        return tape

    @torch.no_grad()
    def record(self, x, grad_log_r, tape: Tape, i: int) -> torch.Tensor:
        out = self.net.record_unclipped(x, tape, i)
        return langevin_output(out, tape.extra["scale"][i], grad_log_r, self.grad_clip, self.net.clip)

    def replay(self, grad_log_r, tape: Tape, drift_only: bool = False) -> torch.Tensor:
        """grad_log_r [T, B, d] (time-major, as the tape) -> [T, B, 2d] (drift_only: [T, B, d])."""
        out = self.net.replay_unclipped(tape, drift_only)
        scale = self.scale(tape.grid[:, None])  # [T, 1, 1 or d]
        return langevin_output(out, scale, grad_log_r, self.grad_clip, self.net.clip, lazy=True)


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
