"""Score entropy (Lou et al. 2024, eq. 5 and Thm 3.6) for positive ratio models s = exp(log_score).

SE(s; r, w) = sum_{y != x} w_y [s_y - r_y log s_y + K(r_y)],  K(a) = a (log a - 1), K(0) = 0:
a Bregman divergence of -log, >= 0 and = 0 iff s_y = r_y wherever w_y > 0. The denoising form uses
the ratios of the forward kernel r_y = p_{t|0}(y|x0) / p_{t|0}(x_t|x0) and weights w_y = Q(x_t, y)
(the rate y -> x_t); with sigma(t) in front and summed over positions it is the training loss and
the ELBO integrand. The graphs' closed forms below never build the dense ratios.
"""

import torch
from torch import Tensor


def entropy_const(a: Tensor) -> Tensor:
    """K(a) = a (log a - 1), with K(0) = 0."""
    return torch.xlogy(a, a) - a


def dense_score_entropy(log_score: Tensor, ratio: Tensor, weight: Tensor) -> Tensor:
    """sum_y weight_y [e^{l_y} - r_y l_y + K(r_y)] over the last dim; terms with weight 0 are skipped
    (the current token must have weight 0). [..., V] -> [...]; a reference for the closed forms."""
    on = weight > 0
    l = torch.where(on, log_score, torch.zeros_like(log_score))
    r_log = torch.where(ratio > 0, ratio * l, torch.zeros_like(l))
    terms = torch.where(on, weight * (l.exp() - r_log + entropy_const(ratio)), torch.zeros_like(l))
    return terms.sum(-1)


def _work_dtype(log_score: Tensor) -> torch.dtype:
    """Half-precision network outputs are promoted: the loss is computed in float32 at least."""
    return torch.promote_types(log_score.dtype, torch.float32)


def _per_seq(sigma_bar: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
    """sigma_bar [B] -> [B, 1, ..., 1] broadcasting against x [B, L, ...]."""
    return sigma_bar.to(dtype).reshape(-1, *([1] * (x.dim() - 1)))


def absorbing_score_entropy(log_score: Tensor, sigma_bar: Tensor, x_t: Tensor, x0: Tensor, mask_id: int) -> Tensor:
    """Absorbing graph, [B, L, n+1] -> [B, L]. Only masked positions contribute: with a = 1/(e^sigma_bar - 1)
    the ratio is a at x0 and 0 elsewhere, the weight 1 on every y != MASK:
    SE = sum_{y != MASK} e^{l_y} - a l_{x0} + K(a)."""
    dtype = _work_dtype(log_score)
    masked = x_t == mask_id
    l = torch.where(masked[..., None], log_score.to(dtype), torch.zeros((), dtype=dtype, device=log_score.device))
    a = 1 / torch.expm1(_per_seq(sigma_bar, x_t, dtype))
    pos = l[..., :mask_id].exp().sum(-1)
    neg = a * l.gather(-1, x0[..., None]).squeeze(-1)
    se = pos - neg + entropy_const(a)
    return torch.where(masked, se, torch.zeros_like(se))


def uniform_score_entropy(log_score: Tensor, sigma_bar: Tensor, x_t: Tensor, x0: Tensor) -> Tensor:
    """Uniform graph Q = 11^T/N - I, [B, L, N] -> [B, L]; weights 1/N on every y != x_t.

    With rho = (e^sigma_bar - 1) / (e^sigma_bar - 1 + N): if x_t = x0 every ratio is rho; otherwise the
    ratio is 1/rho at x0 and 1 at the other tokens (K(1) = -1)."""
    dtype = _work_dtype(log_score)
    l = log_score.to(dtype)
    n = l.shape[-1]
    em1 = torch.expm1(_per_seq(sigma_bar, x_t, dtype))
    rho = em1 / (em1 + n)
    l_xt = l.gather(-1, x_t[..., None]).squeeze(-1)
    l_x0 = l.gather(-1, x0[..., None]).squeeze(-1)
    sum_others = l.sum(-1) - l_xt  # sum over y != x_t
    pos = (l.exp().sum(-1) - l_xt.exp()) / n
    same = x_t == x0
    neg = torch.where(same, rho * sum_others / n, l_x0 / em1 + sum_others / n)  # (1/rho - 1)/N = 1/(e^sb - 1)
    const = torch.where(same, (n - 1) / n * entropy_const(rho), (entropy_const(1 / rho) - (n - 2)) / n)
    return pos - neg + const


def weighted_score_entropy(graph, log_score: Tensor, sigma_bar: Tensor, sigma: Tensor, x_t: Tensor, x0: Tensor) -> Tensor:
    """The per-sequence training loss / ELBO integrand: sigma(t) * sum over positions of the score
    entropy, [B] (nats; a Monte Carlo sample of the time integral for t ~ U[0, 1])."""
    se = graph.score_entropy(log_score, sigma_bar, x_t, x0)
    return sigma.to(se.dtype) * se.sum(-1)
