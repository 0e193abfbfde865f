"""SEDD forward processes ("graphs"): rate matrices Q with exp(sigma_bar Q) in closed form.

Convention (as louaaron/Score-Entropy-Discrete-Diffusion): Q[y, x] is the rate x -> y, columns sum
to 0, p_{t|0}(. | x0) = column x0 of exp(sigma_bar Q). Tokens are noised independently per position.
Shapes: B sequences, L positions, `dim` states per position (the real vocabulary `num_tokens`, plus
MASK = num_tokens for the absorbing graph). Every draw takes an explicit `torch.Generator`.
"""

import abc
import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mixlab.core.tensors import per_sample
from mixlab.core.validate import checked
from mixlab.sedd.score_entropy import absorbing_score_entropy, uniform_score_entropy


def _uniforms(x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    return tuple(torch.rand(x0.shape, generator=generator, device=x0.device) for _ in range(2))


class Graph(abc.ABC):
    """A rate matrix Q over `dim` states. Vector-valued methods take i [B, L] (long) and return [B, L, dim]."""

    absorbing: bool = False

    @checked
    def __init__(self, num_tokens: Annotated[int, Field(ge=2)]):
        self.num_tokens = int(num_tokens)

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Number of states per position (n, or n + 1 with MASK)."""

    def _one_hot(self, i: Tensor, dtype: torch.dtype) -> Tensor:
        return F.one_hot(i, self.dim).to(dtype)

    @abc.abstractmethod
    def rate(self, i: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Column i of Q: the rates i -> y."""

    @abc.abstractmethod
    def transp_rate(self, i: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Row i of Q: the rates y -> i (the reverse rate i -> y is s_y times this)."""

    @abc.abstractmethod
    def transition(self, i: Tensor, delta_sigma: Tensor) -> Tensor:
        """Column i of exp(delta_sigma Q): p(y | i) after total noise delta_sigma [B] (or a scalar)."""

    @abc.abstractmethod
    def transp_transition(self, i: Tensor, delta_sigma: Tensor) -> Tensor:
        """Row i of exp(delta_sigma Q): p(i | y) as a vector over y."""

    @abc.abstractmethod
    def staggered_score(self, score: Tensor, delta_sigma: Tensor) -> Tensor:
        """exp(-delta_sigma Q) s over the last dim: p_{sigma - delta}(y) / p_sigma(x) from s = p_sigma(.) / p_sigma(x)
        (Tweedie; `score` holds ratios, not logs)."""

    @abc.abstractmethod
    def sample_transition(
        self, x0: Tensor, sigma_bar: Tensor, generator: torch.Generator | None = None, draws: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """x_t ~ p_{t|0}(. | x0) position-wise, x0 [B, L], sigma_bar [B]. `draws`: two U[0, 1) tensors
        shaped like x0 (whether a token moves, and where to), e.g. slices of a draw made for a whole
        global batch; drawn from `generator` when None."""

    @abc.abstractmethod
    def sample_limit(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device="cpu") -> Tensor:
        """x_1 from the base distribution the samplers start from."""

    @abc.abstractmethod
    def score_entropy(self, log_score: Tensor, sigma_bar: Tensor, x_t: Tensor, x0: Tensor) -> Tensor:
        """Denoising score entropy per position, [B, L, dim] -> [B, L] (unweighted by sigma(t))."""

    @abc.abstractmethod
    def prior_kl(self, x0: Tensor, sigma_bar_1: Tensor) -> Tensor:
        """KL(p_{1|0}(. | x0) || p_base) summed over positions, [B] nats."""

    def reverse_rate(self, i: Tensor, score: Tensor) -> Tensor:
        """Reverse-time rate out of i: R_y = s_y Q[i, y] for y != i, R_i = -sum_{y != i} R_y. [B, L, dim]."""
        r = self.transp_rate(i, score.dtype) * score
        r = r.scatter(-1, i[..., None], torch.zeros_like(r[..., :1]))
        return r.scatter(-1, i[..., None], -r.sum(-1, keepdim=True))


class UniformGraph(Graph):
    """Q = 11^T / N - I: a token jumps at rate 1 - 1/N to a uniformly random token (Q^uniform / N)."""

    absorbing = False

    @property
    def dim(self) -> int:
        return self.num_tokens

    def rate(self, i: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.full((*i.shape, self.dim), 1 / self.dim, dtype=dtype, device=i.device) - self._one_hot(i, dtype)

    def transp_rate(self, i: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.rate(i, dtype)  # Q is symmetric

    def transition(self, i: Tensor, delta_sigma: Tensor) -> Tensor:
        # exp(s Q) = P + e^{-s} (I - P), P = 11^T / N
        s = per_sample(delta_sigma, i)[..., None]
        keep = torch.exp(-s)
        return -torch.expm1(-s) / self.dim + keep * self._one_hot(i, delta_sigma.dtype)

    def transp_transition(self, i: Tensor, delta_sigma: Tensor) -> Tensor:
        return self.transition(i, delta_sigma)

    def staggered_score(self, score: Tensor, delta_sigma: Tensor) -> Tensor:
        # exp(-s Q) = P + e^{s} (I - P)
        s = per_sample(delta_sigma, score[..., 0]).to(score.dtype)[..., None]
        return torch.exp(s) * score - torch.expm1(s) * score.mean(-1, keepdim=True)

    def sample_transition(
        self, x0: Tensor, sigma_bar: Tensor, generator: torch.Generator | None = None, draws: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        u, v = draws if draws is not None else _uniforms(x0, generator)
        move = u < -torch.expm1(-per_sample(sigma_bar, x0))
        new = (v * self.dim).long().clamp_(max=self.dim - 1)  # uniform over the dim states
        return torch.where(move, new, x0)

    def sample_limit(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device="cpu") -> Tensor:
        return torch.randint(0, self.dim, tuple(shape), generator=generator, device=device)

    def score_entropy(self, log_score: Tensor, sigma_bar: Tensor, x_t: Tensor, x0: Tensor) -> Tensor:
        return uniform_score_entropy(log_score, sigma_bar, x_t, x0)

    def prior_kl(self, x0: Tensor, sigma_bar_1: Tensor) -> Tensor:
        """Base = uniform. Per position (independent of x0): p = e^{-s} + (1-e^{-s})/N at x0 and
        q = (1-e^{-s})/N elsewhere, KL = p log(Np) + (N-1) q log(Nq)."""
        n = self.dim
        s = sigma_bar_1.to(torch.promote_types(sigma_bar_1.dtype, torch.float32))
        keep, move = torch.exp(-s), -torch.expm1(-s)
        kl = (keep + move / n) * torch.log1p((n - 1) * keep) + (n - 1) * (move / n) * torch.log1p(-keep)
        return kl * x0.shape[-1]


class AbsorbingGraph(Graph):
    """Q[MASK, i] = 1, Q[i, i] = -1 for real tokens i; MASK = num_tokens (the last state) absorbs."""

    absorbing = True

    @property
    def dim(self) -> int:
        return self.num_tokens + 1

    @property
    def mask_id(self) -> int:
        return self.num_tokens

    def rate(self, i: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return self._one_hot(torch.full_like(i, self.mask_id), dtype) - self._one_hot(i, dtype)

    def transp_rate(self, i: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return (i == self.mask_id)[..., None].to(dtype) - self._one_hot(i, dtype)

    def transition(self, i: Tensor, delta_sigma: Tensor) -> Tensor:
        # column i != MASK: e^{-s} at i, 1 - e^{-s} at MASK; column MASK: 1 at MASK
        s = per_sample(delta_sigma, i)[..., None]
        dtype = delta_sigma.dtype
        masked = (i == self.mask_id)[..., None]
        stay = torch.where(masked, torch.ones_like(s), torch.exp(-s))
        move = torch.where(masked, torch.zeros_like(s), -torch.expm1(-s))
        return stay * self._one_hot(i, dtype) + move * self._one_hot(torch.full_like(i, self.mask_id), dtype)

    def transp_transition(self, i: Tensor, delta_sigma: Tensor) -> Tensor:
        # row i != MASK: e^{-s} at i; row MASK: 1 - e^{-s} everywhere, 1 at MASK
        s = per_sample(delta_sigma, i)[..., None]
        masked = (i == self.mask_id)[..., None].to(delta_sigma.dtype)
        return torch.exp(-s) * self._one_hot(i, delta_sigma.dtype) - masked * torch.expm1(-s)

    def staggered_score(self, score: Tensor, delta_sigma: Tensor) -> Tensor:
        # exp(-s Q): e^{s} s_y for y != MASK; s_MASK + (1 - e^{s}) sum_{y != MASK} s_y at MASK
        s = per_sample(delta_sigma, score[..., 0]).to(score.dtype)[..., None]
        real = torch.exp(s) * score[..., : self.mask_id]
        mask = score[..., self.mask_id :] - torch.expm1(s) * score[..., : self.mask_id].sum(-1, keepdim=True)
        return torch.cat([real, mask], dim=-1)

    def sample_transition(
        self, x0: Tensor, sigma_bar: Tensor, generator: torch.Generator | None = None, draws: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        u = draws[0] if draws is not None else _uniforms(x0, generator)[0]
        move = u < -torch.expm1(-per_sample(sigma_bar, x0))
        return torch.where(move, torch.full_like(x0, self.mask_id), x0)

    def sample_limit(self, shape: tuple[int, ...], generator: torch.Generator | None = None, device="cpu") -> Tensor:
        return torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device)

    def score_entropy(self, log_score: Tensor, sigma_bar: Tensor, x_t: Tensor, x0: Tensor) -> Tensor:
        return absorbing_score_entropy(log_score, sigma_bar, x_t, x0, self.mask_id)

    def prior_kl(self, x0: Tensor, sigma_bar_1: Tensor) -> Tensor:
        """The all-MASK limit has infinite KL against p_{1|0} while sigma_bar(1) is finite, so the base is
        all-MASK with the leakage of the forward process spread uniformly: e^{-s}/n on each real token,
        1 - e^{-s} on MASK. Per position KL = e^{-s} log n (the sampler starts from all-MASK, which
        differs from this base by e^{-s} per position: 1e-3 with log-linear noise)."""
        s = sigma_bar_1.to(torch.promote_types(sigma_bar_1.dtype, torch.float32))
        return torch.exp(-s) * math.log(self.num_tokens) * x0.shape[-1]
