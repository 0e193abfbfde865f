"""Expert statistics shared by MCL and MoE: who won, how often, how many experts are alive."""

import torch


def usage_shares(weight_sums: torch.Tensor) -> torch.Tensor:
    """Per-expert share of the total assignment weight: [K] summing to 1 (uniform if all zero)."""
    total = weight_sums.sum()
    if total <= 0:
        return torch.full_like(weight_sums, 1.0 / weight_sums.numel())
    return weight_sums / total


def dead_experts(shares: torch.Tensor, threshold: float = 0.01) -> int:
    """Number of experts whose share is below `threshold` (the issue's 1% win rate)."""
    return int((shares < threshold).sum())


def effective_experts(shares: torch.Tensor) -> float:
    """K_eff = exp(H(shares)): K for uniform usage, 1 for a single surviving expert."""
    p = shares[shares > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def winners_one_hot(losses: torch.Tensor) -> torch.Tensor:
    """[B, K] one-hot of argmin_k losses[n, k] (ties -> lowest index)."""
    return torch.nn.functional.one_hot(losses.argmin(dim=1), losses.shape[1]).to(losses.dtype)
