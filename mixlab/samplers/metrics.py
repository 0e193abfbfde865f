"""Sampler metrics: log Z estimators from trajectory log weights, the EUBO, and the W2 reference
rows (two independent exact sample sets, and mode-dropping controls) that a sampler's W2 is
read against. W2 itself is generic: `mixlab.metrics.wasserstein.wasserstein2`.

For K trajectories x_0 -> ... -> x_1 with S_F = sum log p_F and S_B = sum log p_B,

    log w_k = log R(x_1^k) + S_B^k - S_F^k
    log Z_hat    = mean_k log w_k                    (ELBO, a lower bound in expectation)
    log Z_hat_RW = logsumexp_k log w_k - log K       (importance-weighted; the code's logmeanexp)
    Delta        = log Z - estimate                  (signed; >= 0 in expectation)
    EUBO         = mean_k log w_k over backward trajectories from exact target samples (upper bound).

`sampler_metrics` assembles one evaluation (validation during training, the `sampler` evaluator).
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from mixlab.metrics.wasserstein import wasserstein2
from mixlab.samplers.energies import GMM25, Energy, Funnel, Manywell


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
Draw = Callable[[Energy, int, torch.Generator], torch.Tensor]


def exact_draw(energy: Energy, n: int, generator: torch.Generator) -> torch.Tensor:
    return energy.sample(n, generator)


def gmm_without_corner_mode(energy: GMM25, n: int, generator: torch.Generator) -> torch.Tensor:
    """25GMM with its corner mode (-10,-10) dropped (24 modes, weights 1/24): a mode-dropping control."""
    weights = torch.ones(len(energy.means))
    weights[0] = 0.0
    return energy.sample(n, generator, weights=weights)


def manywell_deep_wells_only(energy: Manywell, n: int, generator: torch.Generator) -> torch.Tensor:
    """Manywell with every a in its deep well (a > 0): the paper's mode-collapsed samplers' W2 level."""
    return energy.sample(n, generator, positive_only=True)


@dataclass
class ReferenceRow:
    name: str
    mean: float
    std: float  # population std over the seeds (numpy's default, ddof 0)
    values: list[float]

    def __str__(self) -> str:
        return f"{self.name}: W2 = {self.mean:.3f} ± {self.std:.3f} ({len(self.values)} seeds)"


def reference_w2(energy: Energy, draw: Draw = exact_draw, n: int = 2000, seeds: Iterable[int] = range(5),
                 name: str = "") -> ReferenceRow:
    """W2 between `draw(energy, n, g)` and an independent exact set of n, per seed (one CPU
    generator seeded per seed draws both sets, the `draw` set first)."""
    values = []
    for seed in seeds:
        generator = torch.Generator(device=energy.device).manual_seed(int(seed))
        a = draw(energy, n, generator)
        b = energy.sample(n, generator)
        if a is None or b is None:
            raise ValueError(f"{type(energy).__name__} has no exact sampler: no W2 reference")
        values.append(wasserstein2(a, b))
    return ReferenceRow(name or type(energy).__name__, float(np.mean(values)), float(np.std(values)), values)


def reference_w2_rows(n: int = 2000, seeds: Iterable[int] = range(5)) -> list[ReferenceRow]:
    """The reference rows: exact-vs-exact W2 for 25GMM, Funnel, Manywell-32, and the mode-dropping
    controls (Manywell-32 deep wells only; 25GMM without one corner mode)."""
    seeds = list(seeds)
    gmm, manywell = GMM25(), Manywell(32)
    return [
        reference_w2(gmm, n=n, seeds=seeds, name="25GMM exact vs exact"),
        reference_w2(Funnel(10), n=n, seeds=seeds, name="Funnel exact vs exact"),
        reference_w2(manywell, n=n, seeds=seeds, name="Manywell-32 exact vs exact"),
        reference_w2(manywell, manywell_deep_wells_only, n=n, seeds=seeds, name="Manywell-32 deep wells only vs exact"),
        reference_w2(gmm, gmm_without_corner_mode, n=n, seeds=seeds, name="25GMM without one corner mode vs exact"),
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


def sampler_metrics(energy: Energy, x: torch.Tensor, log_w: torch.Tensor, truth: torch.Tensor | None = None,
                    eubo_log_w: torch.Tensor | None = None, w2: bool = True) -> dict[str, float]:
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


# controls beside exact-vs-exact, per energy class (the paper's mode-dropping levels)
CONTROLS: dict[type, list[tuple[str, Draw]]] = {
    GMM25: [("without one corner mode", gmm_without_corner_mode)],
    Manywell: [("deep wells only", manywell_deep_wells_only)],
}


def reference_rows_for(energy: Energy, n: int, seeds: Iterable[int]) -> list[ReferenceRow]:
    """The W2 rows a sampler's W2 on `energy` at n samples is read against: exact vs exact and
    the energy's mode-dropping controls; [] when the energy has no exact sampler (LGCP)."""
    if energy.sample(2, torch.Generator(device=energy.device).manual_seed(0)) is None:
        return []
    seeds = list(seeds)
    controls = next((CONTROLS[c] for c in type(energy).__mro__ if c in CONTROLS), [])
    rows = [reference_w2(energy, n=n, seeds=seeds, name="exact vs exact")]
    return rows + [reference_w2(energy, draw, n=n, seeds=seeds, name=f"{name} vs exact") for name, draw in controls]

