"""Training objectives of the diffusion samplers (Sendera et al. 2024, reference §3), one small
class each, chosen by config `_target_` (model.objective).

Every objective is called as
    objective(log_pf [B,T], log_pb [B,T], log_r [B], log_f [B,T+1] | None, log_z [] | None,
              all_reduce_mean=None) -> scalar loss
(`Trajectories.terms()` gives the first four). S_F = sum_i log pf_i, S_B = sum_i log pb_i.
Class attributes tell the system what an objective needs: `needs_flow` (a state-conditional
flow), `needs_log_z` (the learned scalar log Z_theta), `reparametrised` (PIS: a
rollout with gradients through the simulation) and `batch_sum` (SubTB sums over the batch: under
DDP each rank's loss is multiplied by the world size). `check(flow)` raises ArgumentError('flow')
when the flow does not fit (the system calls it when it is built).
For flows, log F_T is always replaced by log R(x_1) (detached).
"""

import math
from abc import ABC, abstractmethod

import torch

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import PositiveFloat, PositiveInt, checked


class Objective(ABC):
    needs_flow = False
    needs_log_z = False
    reparametrised = False
    batch_sum = False  # a sum over the batch, not a mean (DDP: each rank's loss x world size)
    name = "objective"

    def bind(self, dim: int) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Told the target's dimension by the system (PIS scales by 1/d); most objectives ignore it."""

    def check(self, flow) -> None:
        """ArgumentError('flow') when this objective needs a flow network and has none."""
        if self.needs_flow and flow is None:
            raise ArgumentError(
                "flow", f"{self.name} needs a state-conditional flow network (e.g. mixlab.samplers.nets.FlowNet); got none"
            )

    @abstractmethod
    def __call__(
        self,
        log_pf: torch.Tensor,
        log_pb: torch.Tensor,
        log_r: torch.Tensor,
        log_f: torch.Tensor | None = None,
        log_z: torch.Tensor | None = None,
        all_reduce_mean=None,
    ) -> torch.Tensor:
        """The loss from log p_F / log p_B [B,T], log R [B], log F [B,T+1] or None, log Z."""

    def _flows(self, log_f: torch.Tensor | None, log_r: torch.Tensor) -> torch.Tensor:
        """log F [B, T+1] with log F_T := log R(x_1) (detached)."""
        if log_f is None:
            self.check(None)
        return torch.cat([log_f[:, :-1], log_r.detach()[:, None]], dim=1)


class TrajectoryBalance(Objective):
    """TB: 1/2 mean_b (log Z_theta + S_F - S_B - log R)^2, log R without gradient."""

    needs_log_z = True
    name = "TB"

    def __call__(self, log_pf, log_pb, log_r, log_f=None, log_z=None, all_reduce_mean=None):
        if log_z is None:
            raise TypeError("TrajectoryBalance needs log_z (the learned log Z_theta)")
        resid = log_z + log_pf.sum(-1) - log_pb.sum(-1) - log_r.detach()  # [B]
        return 0.5 * (resid**2).mean()


class VarGrad(Objective):
    """VarGrad: zeta = log R + S_B - S_F; 1/2 mean_b (zeta - mean zeta)^2 (no log Z_theta).
    mean zeta is detached (same gradient: the residuals sum to zero). Under DDP pass
    `all_reduce_mean` (scalar -> mean over ranks, equal batch sizes) so the centre is the global
    batch mean; the ranks' losses then average to the single-process loss."""

    name = "VarGrad"

    def __call__(self, log_pf, log_pb, log_r, log_f=None, log_z=None, all_reduce_mean=None):
        zeta = log_r.detach() + log_pb.sum(-1) - log_pf.sum(-1)  # [B]
        centre = zeta.detach().mean()
        if all_reduce_mean is not None:
            centre = all_reduce_mean(centre).detach()
        return 0.5 * ((zeta - centre) ** 2).mean()


class DetailedBalance(Objective):
    """DB: mean_b sum_i 1/2 (log F_i + log pf_i - log pb_i - log F_{i+1})^2, log F_T := log R."""

    needs_flow = True
    name = "DB"

    def __call__(self, log_pf, log_pb, log_r, log_f=None, log_z=None, all_reduce_mean=None):
        f = self._flows(log_f, log_r)
        return 0.5 * ((f[:, :-1] + log_pf - log_pb - f[:, 1:]) ** 2).sum(-1).mean()


def subtb_weights(T: int, lam: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """[T+1, T+1] weights w_mn = lam^(n-m) / sum_{m'<n'} lam^(n'-m') for m < n, 0 on and below
    the diagonal (computed in log space, float64)."""
    k = torch.arange(T + 1, dtype=torch.float64)
    diff = k[None, :] - k[:, None]  # [m, n] -> n - m
    logw = torch.where(diff > 0, diff * math.log(lam), torch.full_like(diff, -math.inf))
    return torch.exp(logw - torch.logsumexp(logw.flatten(), 0)).to(dtype=dtype, device=device)


class SubTrajectoryBalance(Objective):
    """SubTB(lam): sum_b sum_{m<n} w_mn (u_m - u_n)^2 with u_k = log F_k - sum_{i<k}(log pf_i - log pb_i),
    i.e. log F_m + sum_{i=m}^{n-1}(log pf_i - log pb_i) - log F_n; a batch SUM, as the reference."""

    needs_flow = True
    batch_sum = True
    name = "SubTB"

    @checked
    def __init__(self, lam: PositiveFloat = 2.0):
        self.lam = float(lam)
        self._weights: dict = {}

    def weights(self, T: int, like: torch.Tensor) -> torch.Tensor:
        key = (T, like.dtype, like.device)
        if key not in self._weights:
            self._weights[key] = subtb_weights(T, self.lam, like.dtype, like.device)
        return self._weights[key]

    def __call__(self, log_pf, log_pb, log_r, log_f=None, log_z=None, all_reduce_mean=None):
        f = self._flows(log_f, log_r)  # [B, T+1]
        cum = torch.cat([f.new_zeros(f.shape[0], 1), (log_pf - log_pb).cumsum(-1)], dim=1)  # [B, T+1]
        u = f - cum
        resid = u[:, :, None] - u[:, None, :]  # [B, m, n]
        return (self.weights(log_pf.shape[1], f) * resid**2).sum()


class ForwardLookingSubTB(SubTrajectoryBalance):
    """FL-SubTB: the SubTB loss with the forward-looking flow (mixlab.samplers.nets.ForwardLookingFlow),
    whose log F(x, t) already contains (1 - t) log N(x; 0, ...) + t log R(x)."""

    name = "FL-SubTB"

    def check(self, flow) -> None:
        super().check(flow)
        if not flow.uses_log_r:
            raise ArgumentError(
                "flow",
                "FL-SubTB needs a forward-looking flow (mixlab.samplers.nets.ForwardLookingFlow), got one that ignores log R",
            )


class PathIntegralSampler(Objective):
    """PIS: (1/d) mean_b (S_F - S_B - log R) on reparametrised rollouts (log R with gradient).
    `dim` None: the target's, set by the system through `bind`."""

    reparametrised = True
    name = "PIS"

    @checked
    def __init__(self, dim: PositiveInt | None = None):
        self.dim = dim

    def bind(self, dim: int) -> None:  # noqa: B027 (an optional hook, not abstract)
        if self.dim is not None and self.dim != dim:
            raise ArgumentError("dim", f"{self.dim} differs from the energy's dimension {dim} (leave it null)")
        self.dim = dim

    def __call__(self, log_pf, log_pb, log_r, log_f=None, log_z=None, all_reduce_mean=None):
        if self.dim is None:
            raise TypeError("PathIntegralSampler needs the dimension: pass dim or call bind(dim)")
        return (log_pf.sum(-1) - log_pb.sum(-1) - log_r).mean() / self.dim
