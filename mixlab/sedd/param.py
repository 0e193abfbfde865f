"""How raw network outputs become log-scores l [B, L, dim] (log of the ratios p_t(y) / p_t(x_t)).

Both parameterisations set the entry at the current token to 0 (its ratio is 1 by definition).
`check(graph)` is called by the system's constructor so a wrong pairing fails before training; it
raises ArgumentError naming the system's `param` argument.
"""

import abc
import math

import torch
from torch import Tensor

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import checked


def _log_expm1(sigma_bar: Tensor) -> Tensor:
    """log(e^sigma_bar - 1), [B] -> [B, 1, 1]."""
    return torch.log(torch.expm1(sigma_bar)).reshape(-1, 1, 1)


def _zero_current(log_score: Tensor, x_t: Tensor) -> Tensor:
    return log_score.scatter(-1, x_t[..., None], torch.zeros_like(log_score[..., :1]))


def _as_float(logits: Tensor) -> Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class Parameterisation(abc.ABC):
    """`param(logits, x_t, sigma_bar, graph) -> log_score`; `check(graph)` refuses a graph it cannot serve."""

    time_conditioned: bool = True  # False: the network ignores sigma_bar (its outputs can be cached while sampling)

    def check(self, graph) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Raise ArgumentError("param", ...) when this parameterisation does not fit `graph`."""

    @abc.abstractmethod
    def __call__(self, logits: Tensor, x_t: Tensor, sigma_bar: Tensor, graph) -> Tensor: ...


class SEDDScore(Parameterisation):
    """The network's output is the log-score (Lou et al. 2024). With `scale_by_sigma` (absorbing graph
    only) it is offset by -log(e^sigma_bar - 1) - log(dim - 1): zero logits then give the exact score
    of a uniform p0 over the real tokens."""

    time_conditioned = True

    @checked
    def __init__(self, scale_by_sigma: bool = False):
        self.scale_by_sigma = bool(scale_by_sigma)

    def check(self, graph) -> None:  # noqa: B027 (an optional hook, not abstract)
        if self.scale_by_sigma and not graph.absorbing:
            raise ArgumentError(
                "param.scale_by_sigma",
                "the 1/(e^sigma_bar - 1) offset is the absorbing graph's; set it false for the uniform graph",
            )

    def __call__(self, logits: Tensor, x_t: Tensor, sigma_bar: Tensor, graph) -> Tensor:
        l = _as_float(logits)
        if self.scale_by_sigma:
            l = l - _log_expm1(sigma_bar.to(l.dtype)) - math.log(graph.dim - 1)
        return _zero_current(l, x_t)


class RADDScore(Parameterisation):
    """Reparameterised absorbing diffusion (Ou et al. 2024, "RADD"): the network predicts the clean-data
    conditional p0(x | unmasked) without a time input; at a masked position the exact score is
    p0(y) e^{-sigma_bar} / (1 - e^{-sigma_bar}). Unmasked positions follow the same formula (their
    reverse rates are 0, only the current entry 0 matters); MASK gets log p0 = -inf except where it is
    the current token."""

    time_conditioned = False

    def check(self, graph) -> None:  # noqa: B027 (an optional hook, not abstract)
        if not graph.absorbing:
            raise ArgumentError("param", "RADD needs the absorbing graph (it predicts p0 at masked positions)")

    def log_p0(self, logits: Tensor, graph) -> Tensor:
        """log_softmax over the real tokens; the MASK column (the last) is -inf."""
        l = _as_float(logits)
        mask_col = torch.zeros(l.shape[-1], dtype=torch.bool, device=l.device)
        mask_col[graph.mask_id] = True
        return torch.log_softmax(l.masked_fill(mask_col, float("-inf")), dim=-1)

    def __call__(self, logits: Tensor, x_t: Tensor, sigma_bar: Tensor, graph) -> Tensor:
        log_p0 = self.log_p0(logits, graph)
        return _zero_current(log_p0 - _log_expm1(sigma_bar.to(log_p0.dtype)), x_t)


class ScoreFn:
    """`score_fn(x [B, L], sigma_bar [B]) -> log_score [B, L, dim]` = param(net(x, sigma_bar), x, sigma_bar, graph).

    The sampler's cache uses the two halves: `network` (the expensive part, reusable for a sequence
    whose tokens did not change when `time_conditioned` is False: the net must then ignore sigma_bar)
    and `log_score` (cheap, recomputed at every noise level)."""

    def __init__(self, net, param, graph):
        self.net, self.param, self.graph = net, param, graph

    @property
    def time_conditioned(self) -> bool:
        return self.param.time_conditioned

    def network(self, x: Tensor, sigma_bar: Tensor) -> Tensor:
        return self.net(x, sigma_bar)

    def log_score(self, out: Tensor, x: Tensor, sigma_bar: Tensor) -> Tensor:
        return self.param(out, x, sigma_bar, self.graph)

    def __call__(self, x: Tensor, sigma_bar: Tensor) -> Tensor:
        return self.log_score(self.network(x, sigma_bar), x, sigma_bar)
