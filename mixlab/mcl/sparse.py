"""The sparse MCL step: each expert's gradient forward runs only on the samples it trains on.

With one-hot weights (hard WTA, resilient MCL) expert k's loss only involves the samples it won,
so its forward/backward need not see the others. MCLDiffusion routes with a gradient-free
K-expert forward (the reference's no_grad routing) and then calls `sparse_expert_losses`,
which runs expert k on {n : w_nk != 0} and normalises exactly as `weighted_expert_losses` does on
the dense [B, K] matrix. At K = 4 that is K no-grad forwards plus about one forward/backward
over the batch, instead of K forward/backwards.
"""

from collections.abc import Callable
from typing import Literal

import torch

from mixlab.mcl.assignment import weighted_expert_losses


def use_sparse(sparse: Literal["auto", True, False], one_hot: bool) -> bool:
    """`model.sparse`: auto -> sparse exactly when the rule's weights are one-hot; true/false as said.
    The caller rejects true with a soft rule (its losers' weights would need every expert's gradient)."""
    return one_hot if sparse == "auto" else sparse is True


def sparse_expert_losses(
    expert_loss: Callable[[int, torch.Tensor], torch.Tensor], weights: torch.Tensor, normalization: str, totals: torch.Tensor
) -> torch.Tensor:
    """One loss per expert, [K], equal to `weighted_expert_losses(m, weights, normalization, totals)`
    without computing m where the weight is zero.

    expert_loss(k, idx) -> [len(idx)]: expert k's per-sample loss (with gradient) on samples idx.
    weights [B, K] (no gradient); totals [K]: the denominators (global weight totals, or B).
    An expert with no sample gets a constant 0 (its parameters' gradient slice stays zero).
    """
    weights = weights.detach()
    losses = []
    for k in range(weights.shape[1]):
        idx = weights[:, k].nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            losses.append(totals.new_zeros(()))
            continue
        m_k = expert_loss(k, idx)  # [n_k]
        losses.append(weighted_expert_losses(m_k[:, None], weights[idx, k : k + 1], normalization, totals[k : k + 1])[0])
    return torch.stack(losses)
