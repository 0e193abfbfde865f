"""2-Wasserstein distance between two empirical distributions by exact optimal transport (POT).

W2 = sqrt(min_gamma <gamma, C>), C_ij = |x_i - y_j|^2 in float64, uniform weights, POT's network
simplex (`ot.emd2`, numItermax 1e7). This is what the diffusion-sampler papers report as "W2"
(the reference code's `wasserstein(..., power=2)`; the paper typesets the column as W_2^2).
A solve that stops before optimality raises instead of returning a bound.
"""

import math
import warnings

import numpy as np
import torch

from mixlab.core.errors import ConfigError
from mixlab.core.validate import PositiveInt, checked

NUM_ITER_MAX = 10_000_000


class OTNotConvergedError(RuntimeError):
    """POT's exact solver stopped before optimality (result code != 1)."""


def _as_points(z) -> np.ndarray:
    z = z.detach().cpu().double().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, dtype=np.float64)
    return z.reshape(len(z), -1)


@checked
def wasserstein2(x: object, y: object, num_iter_max: PositiveInt = NUM_ITER_MAX) -> float:
    """sqrt(exact OT cost) between the point sets x [n,d] and y [m,d] (tensors or arrays)."""
    import ot
    from scipy.spatial.distance import cdist

    x, y = _as_points(x), _as_points(y)
    if min(len(x), len(y)) < 2:
        raise ConfigError("n", f"W2 needs at least 2 samples per set, got {len(x)} and {len(y)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"W2: dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    cost = np.ascontiguousarray(cdist(x, y, "sqeuclidean"), dtype=np.float64)  # per pair, no |x|^2+|y|^2-2xy cancellation
    with warnings.catch_warnings():  # POT warns on non-convergence; its log says so and we raise below
        warnings.filterwarnings("ignore", message="numItermax reached", category=UserWarning)
        value, log = ot.emd2(ot.unif(len(x)), ot.unif(len(y)), cost, numItermax=int(num_iter_max), log=True)
    if log.get("result_code") != 1 or log.get("warning"):
        raise OTNotConvergedError(
            f"W2: exact OT did not converge (POT result code {log.get('result_code')}: "
            f"{log.get('warning')}); raise num_iter_max (now {int(num_iter_max)})"
        )
    return math.sqrt(max(float(value), 0.0))
