"""Small tensor helpers shared by the methods."""

from torch import Tensor


def per_sample(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample value v [B] shaped [B, 1, ..., 1] to broadcast against x [B, ...]; a scalar stays a scalar."""
    return v if v.dim() == 0 else v.reshape(-1, *([1] * (x.dim() - 1)))
