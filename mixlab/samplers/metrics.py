"""Sampler metrics: log Z estimators from trajectory log weights, the EUBO, and the W2 reference
rows (two independent exact sample sets, and the energy's mode-dropping controls,
`Energy.mode_controls`) that a sampler's W2 is read against. W2 itself is generic: `mixlab.metrics.wasserstein.wasserstein2`.

For K trajectories x_0 -> ... -> x_1 with S_F = sum log p_F and S_B = sum log p_B,

    log w_k = log R(x_1^k) + S_B^k - S_F^k
    log Z_hat    = mean_k log w_k                    (ELBO, a lower bound in expectation)
    log Z_hat_RW = logsumexp_k log w_k - log K       (importance-weighted; the code's logmeanexp)
    Delta        = log Z - estimate                  (signed; >= 0 in expectation)
    EUBO         = mean_k log w_k over backward trajectories from exact target samples (upper bound).

`sampler_metrics` assembles one evaluation (validation during training, the `sampler` evaluator).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from mixlab.metrics.wasserstein import wasserstein2
from mixlab.samplers.energies import GMM25, Draw, Energy, Funnel, Manywell


def _total(log_p: torch.Tensor) -> torch.Tensor:
    """A per-trajectory sum [K] from per-step terms [K,T] (or the sums [K] themselves)."""
    return log_p.sum(-1) if log_p.ndim == 2 else log_p


def log_weights(log_r: torch.Tensor, log_pf: torch.Tensor, log_pb: torch.Tensor) -> torch.Tensor:
    """log w = log R(x_1) + S_B - S_F [K], in float64; log_pf / log_pb: [K,T] steps or [K] sums."""
    return log_r.double() + _total(log_pb).double() - _total(log_pf).double()


def log_z_elbo(log_w: torch.Tensor) -> float:
    return float(log_w.double().mean())


def log_z_iw(log_w: torch.Tensor) -> float:
    return float(torch.logsumexp(log_w.double(), 0) - math.log(log_w.numel()))


def eubo(log_r: torch.Tensor, log_pf: torch.Tensor, log_pb: torch.Tensor) -> float:
    """Evidence upper bound: mean of log R(x) + S_B - S_F over backward trajectories that start
    at exact target samples x (E = log Z + KL(target path || sampler path) >= log Z)."""
    return log_z_elbo(log_weights(log_r, log_pf, log_pb))


def log_z_report(log_w: torch.Tensor, log_z: float | None = None) -> dict[str, float]:
    """{log_z_hat, log_z_rw} and, when log Z is known, the signed errors {delta_log_z, delta_log_z_rw}."""
    out = {"log_z_hat": log_z_elbo(log_w), "log_z_rw": log_z_iw(log_w)}
    if log_z is not None:
        out["delta_log_z"] = log_z - out["log_z_hat"]
        out["delta_log_z_rw"] = log_z - out["log_z_rw"]
    return out


# ------------------------------------------------------------------------ W2 reference rows
@dataclass
class ReferenceRow:
    name: str
    mean: float
    std: float  # population std over the seeds (numpy's default, ddof 0)
    values: list[float]

    def __str__(self) -> str:
        return f"{self.name}: W2 = {self.mean:.3f} ± {self.std:.3f} ({len(self.values)} seeds)"


def reference_w2(
    energy: Energy, draw: Draw | None = None, n: int = 2000, seeds: Iterable[int] = range(5), name: str = ""
) -> ReferenceRow:
    """W2 between `draw(n, g)` (default: `energy.sample`) and an independent exact set of n, per
    seed (one generator seeded per seed draws both sets, the `draw` set first)."""
    draw = energy.sample if draw is None else draw
    values = []
    for seed in seeds:
        generator = torch.Generator(device=energy.device).manual_seed(int(seed))
        a = draw(n, generator)
        b = energy.sample(n, generator)
        if a is None or b is None:
            raise ValueError(f"{type(energy).__name__} has no exact sampler: no W2 reference")
        values.append(wasserstein2(a, b))
    return ReferenceRow(name or energy.name, float(np.mean(values)), float(np.std(values)), values)


def reference_w2_rows(
    n: int = 2000, seeds: Iterable[int] = range(5), energies: Iterable[Energy] | None = None
) -> list[ReferenceRow]:
    """The reference rows of `energies` (default 25GMM, Funnel, Manywell-32): exact-vs-exact W2 of
    each, then each one's mode-dropping controls, every row named after its energy."""
    seeds, energies = list(seeds), list(energies or (GMM25(), Funnel(10), Manywell(32)))
    rows = [reference_w2(e, n=n, seeds=seeds, name=f"{e.name} exact vs exact") for e in energies]
    return rows + [
        reference_w2(e, draw, n=n, seeds=seeds, name=f"{e.name} {label} vs exact")
        for e in energies
        for label, draw in e.mode_controls()
    ]


# ------------------------------------------------------------------- a sampler's evaluation
def _w2_or_nan(x: torch.Tensor, truth: torch.Tensor) -> float:
    """W2, or NaN (with a warning) for a diverged sampler: non-finite samples, or costs so large
    that the exact solver reports an unbounded problem."""
    import warnings

    from mixlab.metrics.wasserstein import OTNotConvergedError

    if not bool(torch.isfinite(x).all()):
        warnings.warn("W2: the sampler produced non-finite samples; reporting NaN", stacklevel=3)
        return math.nan
    try:
        return wasserstein2(x, truth)
    except OTNotConvergedError as err:
        warnings.warn(f"{err}; reporting NaN (max |x| = {float(x.abs().max()):.3g})", stacklevel=3)
        return math.nan


def sampler_metrics(
    energy: Energy,
    x: torch.Tensor,
    log_w: torch.Tensor,
    truth: torch.Tensor | None = None,
    eubo_log_w: torch.Tensor | None = None,
    w2: bool = True,
) -> dict[str, float]:
    """The numbers of one evaluation: log Z_hat / log Z_hat_RW (and the signed errors Delta =
    log Z - estimate when log Z is known), the EUBO from backward trajectories of exact samples
    (`eubo_log_w`), W2 between the samples x [n,d] and exact samples `truth` (when given and
    `w2`), and the energy's own statistics (25GMM modes hit, Manywell shallow-well share)."""
    out = log_z_report(log_w, energy.log_z)
    if eubo_log_w is not None:
        out["eubo"] = log_z_elbo(eubo_log_w)
        if energy.log_z is not None:
            out["delta_eubo"] = energy.log_z - out["eubo"]  # <= 0 in expectation
    if truth is not None and w2:
        out["w2"] = _w2_or_nan(x, truth)
    out.update(energy.sample_statistics(x))
    return out


def reference_rows_for(energy: Energy, n: int, seeds: Iterable[int]) -> list[ReferenceRow]:
    """The W2 rows a sampler's W2 on `energy` at n samples is read against: exact vs exact and
    the energy's mode-dropping controls; [] when the energy has no exact sampler (LGCP)."""
    if energy.sample(2, torch.Generator(device=energy.device).manual_seed(0)) is None:
        return []
    seeds = list(seeds)
    rows = [reference_w2(energy, n=n, seeds=seeds, name="exact vs exact")]
    return rows + [
        reference_w2(energy, draw, n=n, seeds=seeds, name=f"{label} vs exact") for label, draw in energy.mode_controls()
    ]
