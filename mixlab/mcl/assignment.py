"""MCL assignment rules: turn the [B, K] loss matrix of K experts into per-sample weights.

Every rule is called as `rule(losses, temperature=None, scores=None) -> (weights, winners)`:
- losses [B, K]: each expert's DSM loss on each sample on the *routing* scale (the reference
  sums the squared error over pixels, ~40-800 on MNIST; the annealing temperature acts on it);
- weights [B, K]: how much sample n trains expert k (no gradient);
- winners [B, K]: one-hot "who won" for the usage statistics (argmin of the losses, or the
  scoring heads' choice for resilient MCL).
`weighted_expert_losses` then turns weights and the per-pixel-mean losses into one loss per
expert, normalised per expert as in the reference (a low-weight expert takes full-size steps).
`one_hot` says whether a rule's weights are always one-hot (each sample trains exactly one
expert): MCLDiffusion's sparse path (`model.sparse=auto`) then runs each expert's gradient
forward on its own samples only.
"""

import abc

import torch
import torch.nn.functional as F

from mixlab.core.validate import UnitFloat, checked
from mixlab.metrics.expert_stats import winners_one_hot


class AssignmentRule(abc.ABC):
    """Base class of the rules (conf/model/assignment/<name>.yaml picks one by `_target_`)."""

    uses_temperature = uses_scores = False
    one_hot = False

    @abc.abstractmethod
    def __call__(self, losses: torch.Tensor, temperature: float | None = None, scores: torch.Tensor | None = None):
        """(weights [B, K], winners [B, K]) for the loss matrix `losses` [B, K]."""


class HardWTA(AssignmentRule):
    """Only the winner (argmin loss) trains on a sample: w = one-hot(argmin_k loss)."""

    uses_temperature = uses_scores = False
    one_hot = True

    def __call__(self, losses, temperature=None, scores=None):
        w = winners_one_hot(losses)
        return w, w


class AnnealedWTA(AssignmentRule):
    """w_nk = softmax_k(-loss_nk / (tau + 1e-8)); tau -> 0 is hard WTA, tau -> inf uniform."""

    uses_temperature, uses_scores = True, False
    one_hot = False

    def __call__(self, losses, temperature=None, scores=None):
        if temperature is None:
            raise RuntimeError("AnnealedWTA needs a temperature: add callbacks.temperature (TemperatureAnnealing)")
        return torch.softmax(-losses / (float(temperature) + 1e-8), dim=1), winners_one_hot(losses)


class RelaxedWTA(AssignmentRule):
    """Winner weight 1, every loser weight alpha (the reference: alpha = 0.1)."""

    uses_temperature = uses_scores = False
    one_hot = False

    @checked
    def __init__(self, alpha: UnitFloat = 0.1):
        self.alpha = alpha

    def __call__(self, losses, temperature=None, scores=None):
        win = winners_one_hot(losses)
        return win + self.alpha * (1.0 - win), win


class ResilientMCL(AssignmentRule):
    """The reference's "resilient MCL": scoring heads s_k(x_sigma, sigma) predict which expert
    will win; samples are routed (hard) to argmax_k s_k, and the heads learn
    CE(s, argmin_k loss) alongside the experts (`head_loss`)."""

    uses_temperature, uses_scores = False, True
    one_hot = True

    def __call__(self, losses, temperature=None, scores=None):
        if scores is None:
            raise RuntimeError("ResilientMCL needs scores from the scoring heads (model.scorer)")
        routed = F.one_hot(scores.argmax(dim=1), losses.shape[1]).to(losses.dtype)
        return routed, routed

    @staticmethod
    def head_loss(scores: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the heads' logits [B, K] against the true winner argmin_k loss."""
        return F.cross_entropy(scores, losses.argmin(dim=1))


def weighted_expert_losses(
    per_sample: torch.Tensor, weights: torch.Tensor, normalization: str = "per_expert", totals: torch.Tensor | None = None
) -> torch.Tensor:
    """One loss per expert, [K], from per-sample losses [B, K] (with gradient) and weights [B, K].

    per_expert (the reference): L_k = sum_n w_nk m_nk / (sum_n w_nk + 1e-8), i.e. hard WTA's
    mean over the samples expert k won, relaxed WTA's (sum_S m + a sum_notS m)/(|S| + a|notS|).
    batch (published annealed MCL): L_k = sum_n w_nk m_nk / B.
    `totals` overrides the denominators (sum of weights, or B, over all DDP ranks).
    """
    numer = (weights.detach() * per_sample).sum(dim=0)
    if totals is None:
        totals = weights.detach().sum(dim=0) if normalization == "per_expert" else torch.full_like(numer, per_sample.shape[0])
    return numer / (totals + 1e-8) if normalization == "per_expert" else numer / totals
