"""The reference implementation's costs for one analytic step of SEDD on the absorbing graph
(louaaron/Score-Entropy-Discrete-Diffusion, its `sampling.py` / `graph_lib.py`), written here from
its description for `make bench-sedd`: every position, float32 throughout.

Per step: exp of the log-scores, the staggered score, the transposed transition (a one-hot over the
vocabulary plus the MASK row), their product, and a float32 draw argmax_y p_y / G_y with
G = 1e-10 - log(u + 1e-10), one uniform u per vocabulary entry (that float32 draw under-samples
rare tokens: see tests/sedd/test_absorbing_step.py)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_analytic_step(log_score: Tensor, x: Tensor, delta_sigma: Tensor, mask_id: int, generator=None) -> Tensor:
    """x [B, L] -> the next x, from log_score [B, L, V + 1] float32 and the step's delta sigma_bar [B]."""
    score = log_score.exp()
    grow = torch.exp(delta_sigma)[:, None, None]
    stag = score * grow
    stag[..., mask_id] += (1 - grow[..., 0]) * score.sum(-1)  # the MASK entry of exp(-delta Q) s
    keep = torch.exp(-delta_sigma)[:, None, None]
    trans = keep * F.one_hot(x, mask_id + 1).to(score.dtype)
    trans = trans + torch.where(x == mask_id, 1 - keep[..., 0], torch.zeros_like(keep[..., 0]))[..., None]
    probs = stag * trans
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    return (probs / (1e-10 - (u + 1e-10).log())).argmax(-1)
