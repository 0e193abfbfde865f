"""Unnormalised target densities p(x) = R(x) / Z on R^d for the diffusion samplers.

Every energy is a tiny `nn.Module` chosen by config `_target_` (its tensors are non-persistent
buffers: they follow the system's device and stay out of checkpoints) and owns what is known
about it:

    dim, name                int, str (tables and reports)
    log_reward(x [B,d])      -> [B]      log R(x) = -E(x)
    grad_log_reward(x)       -> [B,d]    closed form here; the base class falls back to autograd
    log_z                    float | None
    sample(n, generator)     -> [n,d] exact samples, or None where none are known
    sample_statistics(x)     -> {name: number} energy-specific summaries of samples; `describe` words them
    mode_controls()          -> [(name, draw(n, generator))]: mode-dropping sample sets a W2 is read against
    figure(x, truth)         -> a matplotlib figure of samples (and exact samples) over the target

A new energy is one class (here or in its own module) and one conf/model/energy/<name>.yaml.
NaN / inf handling (e.g. a NaN gradient -> 0) is the caller's job. The LGCP energy lives in
`mixlab.samplers.lgcp` (it needs data). Constants are checked against quadrature in
tests/samplers/test_energies.py.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from mixlab.core.validate import PositiveFloat, checked

# Manywell: one double well a in R, log R(a) = -a^4 + 6a^2 + a/2 (scipy quadrature, rel. 1e-13).
MANYWELL_Z_A = 11784.509265127823
MANYWELL_LOG_Z_PAIR = math.log(MANYWELL_Z_A) + 0.5 * math.log(2 * math.pi)  # 10.293480 (b ~ N(0,1))
MANYWELL_MEAN_A = 1.1879609833761469  # E[a]
MANYWELL_MEAN_A2 = 2.9598060904889367  # E[a^2]
MANYWELL_SHALLOW_SHARE = 0.15569290378886083  # P(a < 0): the shallow well's share


Draw = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> [n,d] samples


class Energy(nn.Module, ABC):
    """Base class: subclasses set `dim` and `log_z` and implement `log_reward`."""

    dim: int
    log_z: float | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        """log R(x), [B,d] -> [B]."""

    def grad_log_reward(self, x: torch.Tensor) -> torch.Tensor:  # [B,d] -> [B,d]
        """d log R / dx by autograd (subclasses override with a closed form)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_reward(x).sum(), x)
        return grad

    def log_reward_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log R(x) [B], grad log R(x) [B,d]): one energy evaluation (what MALA calls per step)."""
        return self.log_reward(x), self.grad_log_reward(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        return None

    def prepare(self) -> None:
        """Load what the energy reads from disk (a missing file raises DataNotFoundError naming the
        command that fetches it); the system calls it before training or evaluating."""

    def sample_statistics(self, x: torch.Tensor) -> dict[str, float]:
        """Energy-specific summaries of samples [n,d] reported beside the generic metrics."""
        return {}

    def describe(self, stats: dict) -> str:
        """Words for this energy's `sample_statistics` found in `stats` (a dict of metrics), for
        figure titles and printed reports; "" when there are none."""
        return ""

    def mode_controls(self) -> list[tuple[str, Draw]]:
        """Mode-dropping controls: (name, draw) sample sets with modes missing, whose W2 to exact
        samples is the level a mode-collapsed sampler reaches (none by default)."""
        return []

    def figure(self, x: torch.Tensor, truth: torch.Tensor | None):
        """Samples x [n,d] (and exact samples `truth`) over the target: the first two coordinates."""
        from mixlab.samplers.figures import scatter_figure

        return scatter_figure(x, truth, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_reward(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, log_z={self.log_z}"

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers())).device


class GMM25(Energy):
    """Mixture of 25 Gaussians: means {-10,-5,0,5,10}^2, covariance 0.3 I, weights 1/25 (log Z = 0)."""

    name = "25GMM"

    @checked
    def __init__(self, variance: PositiveFloat = 0.3, spacing: PositiveFloat = 5.0):
        super().__init__()
        self.dim, self.log_z, self.variance = 2, 0.0, float(variance)
        grid = torch.arange(-2, 3, dtype=torch.float64) * spacing
        means = torch.cartesian_prod(grid, grid)  # [25,2]: (a, b) for a in grid for b in grid
        self.register_buffer("means", means, persistent=False)

    def _component_log_probs(self, x: torch.Tensor) -> torch.Tensor:  # [B,2] -> [B,25]
        sq = ((x[:, None, :] - self.means.to(x.dtype)) ** 2).sum(-1)
        return -0.5 * sq / self.variance - math.log(2 * math.pi * self.variance) - math.log(len(self.means))

    def log_reward(self, x):
        return torch.logsumexp(self._component_log_probs(x), dim=1)

    def grad_log_reward(self, x):
        resp = torch.softmax(self._component_log_probs(x), dim=1)  # [B,25]
        return (resp @ self.means.to(x.dtype) - x) / self.variance

    def sample(self, n, generator=None, weights: torch.Tensor | None = None):
        """Categorical mode (uniform, or `weights` [25]) then a Gaussian around it."""
        device = self.device
        w = torch.ones(len(self.means), device=device) if weights is None else weights.to(device, torch.float64)
        modes = torch.multinomial(w, n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, generator=generator, device=device, dtype=torch.float64)
        return (self.means[modes] + math.sqrt(self.variance) * noise).float()

    def sample_without_corner_mode(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples with the corner mode (-10,-10) dropped (24 modes, weights 1/24)."""
        weights = torch.ones(len(self.means))
        weights[0] = 0.0
        return self.sample(n, generator, weights=weights)

    def mode_controls(self):
        return [("without one corner mode", self.sample_without_corner_mode)]

    def mode_counts(self, x: torch.Tensor, radius: float | None = None) -> torch.Tensor:
        """Samples per mode [25]: a sample counts for its nearest mean if it lies within `radius`
        (default 3 standard deviations). `(counts > 0).sum()` is the number of modes hit."""
        radius = 3 * math.sqrt(self.variance) if radius is None else radius
        dist = torch.cdist(x.double(), self.means.to(x.device))  # [B,25]
        near, idx = dist.min(dim=1)
        return torch.bincount(idx[near <= radius], minlength=len(self.means))

    def sample_statistics(self, x):
        return {"modes_hit": int((self.mode_counts(x) > 0).sum())}

    def describe(self, stats):
        return f"modes hit {stats['modes_hit']}/{len(self.means)}" if stats.get("modes_hit") is not None else ""

    def figure(self, x, truth):
        """Target contours with the samples, a KDE of the samples, a KDE of exact samples."""
        from mixlab.samplers.figures import SAMPLER, as_numpy, kde, mesh, plt, scatter

        lim = 13.0
        pts, exact = as_numpy(x), as_numpy(truth)
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.5))
        xx, yy = mesh(-lim, lim, -lim, lim)
        grid = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1)).to(self.means)
        log_r = self.log_reward(grid).cpu().numpy().reshape(xx.shape)
        axes[0].contour(xx, yy, np.maximum(log_r, -30), levels=20, cmap="Greys", linewidths=0.6)
        scatter(axes[0], pts, 0, 1, SAMPLER, "sampler")
        axes[0].set(title=f"target contours + {len(pts)} samples", xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        kde(axes[1], pts, lim, "KDE of the samples")
        if exact is not None:
            kde(axes[2], exact, lim, "KDE of exact samples")
        return fig


class Funnel(Energy):
    """Neal's funnel: x_0 ~ N(0, 3^2), x_{1:d-1} | x_0 ~ N(0, e^{x_0} I); normalised (log Z = 0)."""

    @checked
    def __init__(self, dim: Annotated[int, Field(ge=2)] = 10, scale: PositiveFloat = 3.0):
        super().__init__()
        self.dim, self.log_z, self.scale = dim, 0.0, float(scale)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # carries the device

    def log_reward(self, x):
        x0, rest = x[:, 0], x[:, 1:]
        log_p0 = -0.5 * (x0 / self.scale) ** 2 - math.log(self.scale) - 0.5 * math.log(2 * math.pi)
        log_rest = -0.5 * (rest**2).sum(1) * torch.exp(-x0) - 0.5 * (self.dim - 1) * (x0 + math.log(2 * math.pi))
        return log_p0 + log_rest

    def grad_log_reward(self, x):
        x0, rest = x[:, :1], x[:, 1:]
        inv_var = torch.exp(-x0)  # [B,1]
        g0 = -x0 / self.scale**2 - 0.5 * (self.dim - 1) + 0.5 * (rest**2).sum(1, keepdim=True) * inv_var
        return torch.cat([g0, -rest * inv_var], dim=1)

    def sample(self, n, generator=None):
        z = torch.randn(n, self.dim, generator=generator, device=self.device, dtype=torch.float64)
        x0 = self.scale * z[:, :1]
        return torch.cat([x0, torch.exp(0.5 * x0) * z[:, 1:]], dim=1).float()

    def figure(self, x, truth):
        """(x0, x1) over the marginal's contours, exact samples in grey."""
        from mixlab.samplers.figures import mesh, scatter_figure

        fig = scatter_figure(x, truth, 0, 1, lim=(-10, 10), ylim=(-10, 10), title="(x0, x1)")
        xx, yy = mesh(-10, 10, -10, 10)
        log_p = -0.5 * (xx / self.scale) ** 2 - 0.5 * yy**2 * np.exp(-xx) - 0.5 * xx
        fig.axes[0].contour(xx, yy, np.maximum(log_p, -25), levels=25, cmap="Greys", linewidths=0.6, zorder=0)
        return fig


class Manywell(Energy):
    """d/2 independent consecutive pairs (a, b) = (x_{2k}, x_{2k+1}):
    log R = sum_k [-a^4 + 6a^2 + a/2 - b^2/2]; log Z = (d/2) log(Z_a sqrt(2 pi))."""

    # rejection proposal for a (the reference's): 0.2 N(-1.7, 0.5^2) + 0.8 N(1.7, 0.5^2), envelope 3 Z_a
    PROPOSAL_WEIGHTS, PROPOSAL_MEANS, PROPOSAL_STD, ENVELOPE = (0.2, 0.8), (-1.7, 1.7), 0.5, 3.0

    @checked
    def __init__(self, dim: Annotated[int, Field(ge=2, multiple_of=2)] = 32):
        """dim: even (pairs of coordinates)."""
        super().__init__()
        self.dim = dim
        self.log_z = (dim // 2) * MANYWELL_LOG_Z_PAIR
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def name(self) -> str:
        return f"Manywell-{self.dim}"

    @staticmethod
    def well_log_reward(a: torch.Tensor) -> torch.Tensor:
        return -(a**4) + 6 * a**2 + 0.5 * a

    def log_reward(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        return (self.well_log_reward(a) - 0.5 * b**2).sum(1)

    def grad_log_reward(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        return torch.stack([-4 * a**3 + 12 * a + 0.5, -b], dim=2).reshape(x.shape)

    def sample_a(self, n: int, generator: torch.Generator | None = None, positive_only: bool = False) -> torch.Tensor:
        """n exact draws of a (float64 [n]) by rejection; `positive_only` keeps the deep well only
        (a > 0: the mode-dropping control)."""
        device, out, have = self.device, [], 0
        w1, (m0, m1), s = self.PROPOSAL_WEIGHTS[1], self.PROPOSAL_MEANS, self.PROPOSAL_STD
        while have < n:
            m = 2 * (n - have) + 64  # acceptance 1/3 (x 0.84 with positive_only) per proposal
            upper = torch.rand(m, generator=generator, device=device, dtype=torch.float64) < w1
            z = torch.randn(m, generator=generator, device=device, dtype=torch.float64)
            a = torch.where(upper, m1, m0) + s * z
            u = torch.rand(m, generator=generator, device=device, dtype=torch.float64)
            log_q = torch.logsumexp(
                torch.stack(
                    [math.log(self.PROPOSAL_WEIGHTS[0]) - 0.5 * ((a - m0) / s) ** 2, math.log(w1) - 0.5 * ((a - m1) / s) ** 2]
                ),
                0,
            ) - math.log(s * math.sqrt(2 * math.pi))
            keep = torch.log(u) + math.log(self.ENVELOPE * MANYWELL_Z_A) + log_q < self.well_log_reward(a)
            if positive_only:
                keep &= a > 0
            out.append(a[keep])
            have += int(keep.sum())
        return torch.cat(out)[:n]

    def sample(self, n, generator=None, positive_only: bool = False):
        pairs = self.dim // 2
        a = self.sample_a(n * pairs, generator, positive_only).reshape(n, pairs)
        b = torch.randn(n, pairs, generator=generator, device=a.device, dtype=torch.float64)
        return torch.stack([a, b], dim=2).reshape(n, self.dim).float()

    @staticmethod
    def shallow_share(x: torch.Tensor) -> float:
        """Share of the pairs' a-coordinates in the shallow well (a < 0); exact: MANYWELL_SHALLOW_SHARE."""
        return float((x[:, 0::2] < 0).double().mean())

    def sample_deep_wells_only(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples with every a in its deep well (a > 0): the W2 level of the paper's mode-collapsed samplers."""
        return self.sample(n, generator, positive_only=True)

    def mode_controls(self):
        return [("deep wells only", self.sample_deep_wells_only)]

    def sample_statistics(self, x):
        return {"shallow_share": self.shallow_share(x), "shallow_share_exact": MANYWELL_SHALLOW_SHARE}

    def describe(self, stats):
        if stats.get("shallow_share") is None:
            return ""
        return f"shallow-well share {stats['shallow_share']:.3f} (exact {MANYWELL_SHALLOW_SHARE:.3f})"

    def figure(self, x, truth):
        """(x1, x3) and (x2, x3) (1-based: two wells' a, a pair's b) over the 2-d marginal's
        contours, exact samples in grey."""
        from mixlab.samplers.figures import EXACT, SAMPLER, as_numpy, mesh, plt, scatter

        pts, exact = as_numpy(x), as_numpy(truth)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        well = lambda a: -(a**4) + 6 * a**2 + 0.5 * a  # noqa: E731
        for ax, (i, j), (lo, hi) in zip(axes, [(0, 2), (1, 2)], [(-3, 3), (-4, 4)]):
            xx, yy = mesh(lo, hi, -3, 3)
            first = well(xx) if i % 2 == 0 else -0.5 * xx**2
            ax.contour(xx, yy, np.maximum(first + well(yy), -40), levels=25, cmap="Greys", linewidths=0.6)
            scatter(ax, exact, i, j, EXACT, "exact")
            scatter(ax, pts, i, j, SAMPLER, "sampler")
            ax.set(xlabel=f"x{i + 1}", ylabel=f"x{j + 1}", xlim=(lo, hi), ylim=(-3, 3), title=f"(x{i + 1}, x{j + 1})")
        axes[0].legend(loc="upper left", fontsize=8, markerscale=3)
        return fig
