"""MoE gate regularisers exactly as the seed README writes them (G [N,E], rows sum to 1).

diversity = sum_i sum_{j != k} G_ij G_ik      (a SUM over samples: scales with the batch)
balance   = sum_j (1/E - (1/N) sum_i G_ij)^2
The reference code implements different terms (entropy, KL on summed gates, a constant
correlation term, a min-gate hinge); see README "MoE classifier" for why we follow the seed.
"""

import torch


def diversity_loss(gates: torch.Tensor) -> torch.Tensor:
    """Pairwise products of different experts' gates, summed over samples: 0 for one-hot gates,
    maximal (N (1 - 1/E)) for uniform ones. Uses sum_{j!=k} g_j g_k = (sum_j g_j)^2 - sum_j g_j^2."""
    return (gates.sum(dim=1) ** 2 - (gates**2).sum(dim=1)).sum()


def balance_loss(gates: torch.Tensor, usage: torch.Tensor | None = None) -> torch.Tensor:
    """Squared deviation of each expert's mean gate from 1/E, summed over experts. `usage` [E]: the
    mean gates when the caller computed them (over the global batch under DDP); else gates.mean(0)."""
    num_experts = gates.shape[1]
    usage = gates.mean(dim=0) if usage is None else usage
    return ((1.0 / num_experts - usage) ** 2).sum()


def gate_entropy(gates: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean per-sample entropy of the gates (nats); for diagnostics."""
    return -(gates * (gates + eps).log()).sum(dim=1).mean()
