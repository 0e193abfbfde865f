"""Closed forms shared by the SEDD maths tests: i.i.d. categorical data over 6 real tokens, whose
time-conditioned score and RADD output are known exactly."""

import pytest
import torch

from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.sedd.graphs import AbsorbingGraph, UniformGraph
from mixlab.sedd.noise import GeometricNoise, LogLinearNoise

F64 = torch.float64
PI = torch.tensor([0.35, 0.25, 0.15, 0.1, 0.1, 0.05], dtype=F64)  # i.i.d. data over n = 6 real tokens
N = len(PI)
H = float(-(PI * PI.log()).sum())
GRAPHS = {"absorb": lambda: AbsorbingGraph(N), "uniform": lambda: UniformGraph(N)}
NOISE = {"absorb": LogLinearNoise, "uniform": GeometricNoise}  # the paper's pairings


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dense_q(graph) -> torch.Tensor:
    """Q[y, x] = rate x -> y, built from the definitions (not from the graph's methods)."""
    if graph.absorbing:
        q = torch.zeros(graph.dim, graph.dim, dtype=F64)
        q[graph.mask_id, :N] = 1.0
        q[range(N), range(N)] = -1.0
        return q
    return torch.full((N, N), 1 / N, dtype=F64) - torch.eye(N, dtype=F64)


def pi_ext(graph) -> torch.Tensor:
    return torch.cat([PI, torch.zeros(graph.dim - N, dtype=F64)])


def marginal(graph, sigma_bar: torch.Tensor) -> torch.Tensor:
    """p_t of i.i.d. PI data, [B] -> [B, dim] (closed forms; checked against matrix_exp below)."""
    s = sigma_bar.to(F64)[:, None]
    if graph.absorbing:
        return torch.cat([torch.exp(-s) * PI, -torch.expm1(-s)], dim=1)
    return torch.exp(-s) * PI - torch.expm1(-s) / N


def exact_log_score(graph):
    """log p_t(y) - log p_t(x_t) for i.i.d. data: the exact time-conditioned score."""

    def score_fn(x, sigma_bar):
        logp = marginal(graph, sigma_bar).log()[:, None, :].expand(*x.shape, graph.dim)
        return logp - logp.gather(-1, x[..., None])

    return score_fn


class IIDLogits(torch.nn.Module):
    """A time-free 'network' whose RADD output is p0 = PI at every position (exact for i.i.d. data)."""

    def forward(self, x, sigma_bar):
        return torch.cat([PI.log(), torch.zeros(1, dtype=F64)]).expand(*x.shape, N + 1)


def tv_to_pi(tokens: torch.Tensor) -> float:
    freq = torch.bincount(tokens.flatten(), minlength=N).to(F64) / tokens.numel()
    return 0.5 * float((freq[:N] - PI).abs().sum() + freq[N:].sum())


def key_of(fn) -> str:
    """The key named by the one-line error that fn raises: a ConfigError's config key or an
    ArgumentError's argument (named relative to the function or constructor)."""
    with pytest.raises((ConfigError, ArgumentError)) as err:
        fn()
    assert "\n" not in str(err.value)
    return err.value.key if isinstance(err.value, ConfigError) else err.value.arg
