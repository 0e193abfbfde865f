"""The reverse step of the absorbing graph, computed only where it can change anything.

On the absorbing graph an unmasked token never changes (Euler, analytic and the final denoiser all
give it probability 1), and at a masked position every predictor's transition has the same shape
(`mixlab.sedd.sampling`, written out for x = MASK):

    p_y    = c s_y                      for each real token y       (c = dt sigma(t) for Euler,
    p_MASK = max(0, w - c sum_y s_y)    staying masked                    expm1(delta sigma_bar) for
                                                                          analytic, the denoiser: w = 0)

with w = 1 (Euler) or s_MASK (analytic). So a masked position unmasks with probability
min(1, c sum_y s_y / w) and then takes token y with probability s_y / sum_y s_y.

The cost is paid on the masked rows only (their share shrinks along the trajectory), in float32
where the error is bounded and float64 where it matters:
- the scores of a row are exp(l_y - max_y l_y) in float32 (each relative error ~6e-8, values in
  (0, 1], no overflow), their row max carried in float64;
- sums are accumulated in float64 over blocks of the vocabulary, and the token is drawn by the
  inverse CDF with one float64 uniform per row (first the block, then the token inside it), so a
  token of relative weight r is drawn with probability r up to float64 rounding: no float32 draw
  that under-samples rare tokens, and no [rows, V] tensor of random numbers.
"""

import torch
from torch import Tensor

BLOCK = 1024  # vocabulary entries per block of the inverse-CDF draw


def block_sums(weights: Tensor, block: int = BLOCK) -> Tensor:
    """weights [M, V] (>= 0) -> float64 sums over consecutive blocks of `block` entries [M, ceil(V / block)]
    (one block when V <= block)."""
    m, v = weights.shape
    block = min(block, v)
    full = v // block
    sums = [weights[:, : full * block].reshape(m, full, block).sum(-1, dtype=torch.float64)] if full else []
    if v % block:
        sums.append(weights[:, full * block :].sum(-1, keepdim=True, dtype=torch.float64))
    return torch.cat(sums, dim=1)


def draw_from_blocks(weights: Tensor, sums: Tensor, u: Tensor, block: int = BLOCK) -> Tensor:
    """Index y ~ weights[row] / sum(weights[row]) for each row, by the inverse CDF at u [M] in [0, 1)
    (float64): the block from the float64 block sums, then the entry inside it. An entry of weight 0
    is never drawn."""
    m, v = weights.shape
    block = min(block, v)  # as block_sums
    cum = sums.cumsum(-1)  # [M, nb]
    target = u.to(torch.float64) * cum[:, -1]
    b = torch.searchsorted(cum, target[:, None], right=True).clamp_max(cum.shape[1] - 1)  # [M, 1]
    before = torch.where(b > 0, cum.gather(1, (b - 1).clamp_min(0)), torch.zeros_like(target[:, None]))
    cols = b * block + torch.arange(block, device=weights.device)  # [M, block]
    inside = cols < v
    inner = torch.where(inside, weights.gather(1, cols.clamp_max(v - 1)), 0).to(torch.float64).cumsum(-1)
    j = torch.searchsorted(inner, target[:, None] - before, right=True)
    last = (inner < inner[:, -1:]).sum(-1, keepdim=True)  # the block's last entry of positive weight
    return (b * block + torch.minimum(j, last)).squeeze(1)


def row_weights(logits: Tensor) -> tuple[Tensor, Tensor]:
    """log scores [..., V] -> (exp(l - max l) in float32 [..., V], max l [..., 1])."""
    real = logits.float()
    top = real.max(-1, keepdim=True).values
    return (real - top).exp_(), top


def absorbing_update(
    log_score: Tensor,
    x: Tensor,
    mask_id: int,
    c: Tensor,
    stay: str | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One reverse step on the absorbing graph: x [B, L] with log_score [B, L, V + 1] (MASK = V last),
    c [B] the step's factor, `stay` "one" (Euler: w = 1), "score" (analytic: w = s_MASK) or None (the
    denoiser: every masked position unmasks). Returns the new x (unmasked positions unchanged)."""
    rows = (x == mask_id).nonzero(as_tuple=True)
    if rows[0].numel() == 0:
        return x
    logits = log_score[rows]  # [M, V + 1], only the masked positions
    weights, top = row_weights(logits[:, :mask_id])  # [M, V] float32 in (0, 1]
    sums = block_sums(weights)
    u = torch.rand(2, rows[0].numel(), dtype=torch.float64, generator=generator, device=x.device)
    tokens = draw_from_blocks(weights, sums, u[1])
    if stay is None:
        unmask = torch.ones_like(tokens, dtype=torch.bool)
    else:
        # log(c sum_y s_y) - log w, in float64; unmask with probability min(1, c sum_y s_y / w)
        log_mass = c.to(torch.float64)[rows[0]].log() + top.squeeze(1).to(torch.float64) + sums.sum(-1).log()
        log_w = logits[:, mask_id].to(torch.float64) if stay == "score" else torch.zeros_like(log_mass)
        unmask = u[0].log() < log_mass - log_w
    out = x.clone()
    out[rows] = torch.where(unmask, tokens, torch.full_like(tokens, mask_id))
    return out


def absorbing_probs(log_score: Tensor, x: Tensor, mask_id: int, c: Tensor, stay: str | None) -> Tensor:
    """The normalised transition probabilities [B, L, V + 1] that `absorbing_update` draws from,
    computed by the same float32 / float64 arithmetic (for tests against the float64 formulas)."""
    weights, top = row_weights(log_score[..., :mask_id])
    total = weights.sum(-1, dtype=torch.float64)
    token = weights.to(torch.float64) / total[..., None]
    if stay is None:
        p_unmask = torch.ones_like(total)
    else:
        log_mass = c.to(torch.float64)[:, None].log() + top.squeeze(-1).to(torch.float64) + total.log()
        log_w = log_score[..., mask_id].to(torch.float64) if stay == "score" else torch.zeros_like(log_mass)
        p_unmask = (log_mass - log_w).exp().clamp_max(1)
    probs = torch.cat([token * p_unmask[..., None], (1 - p_unmask)[..., None]], dim=-1)
    fixed = torch.nn.functional.one_hot(x, mask_id + 1).to(torch.float64)
    return torch.where((x == mask_id)[..., None], probs, fixed)
