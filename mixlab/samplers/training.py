"""The parts of a sampler's training iteration that are not the LightningModule itself: the step
loader, the forward / backward alternation and the local-search schedule, the local-search
settings, and the collectives that keep N processes equal to one (global draws sliced per rank,
replicated buffers, merged MALA output).

Which iteration does what (Sendera et al. 2024, reference §3-4):
    forward  (every iteration; the even ones with both-ways training): rollouts from x_0 = 0 with
             exploration, the objective; terminal states and log R go to the replay buffer.
    backward (odd iterations with both-ways training, forced on by local search): a prioritised
             batch from the local-search buffer (else the replay buffer), Brownian-bridge rollouts
             down to x_0 = 0, the same objective (same log Z).
    local search before the backward iterations 1, every + 1, 2 every + 1, ... (the reference's
             `it % 100 == 1`): MALA from a prioritised replay-buffer batch into the LS buffer.
"""

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import NonNegativeInt, PositiveFloat, PositiveInt, checked
from mixlab.samplers.local_search import AdaptiveStepSize, MALAResult, PaperStepSize


class StepIndices(Dataset):
    """`n` items 0..n-1: a data-free system's loader, one item per iteration (only the count matters)."""

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class LocalSearchSettings:
    """Local search (config: model.local_search): parallel MALA every `every` iterations on
    `batch_size` chains from the replay buffer, `steps` steps of which the first `burn_in` are
    discarded, initial step size `step_size` adapted by `rule` (default PaperStepSize) and carried
    over between calls (`carry_step_size`; false: every call starts again from `step_size`, as the
    reference code does), target R^beta. `enabled`: false leaves local search off."""

    @checked
    def __init__(
        self,
        enabled: bool = False,
        every: PositiveInt = 100,
        steps: PositiveInt = 200,
        burn_in: NonNegativeInt = 100,
        step_size: PositiveFloat = 0.01,
        batch_size: PositiveInt = 300,
        beta: PositiveFloat = 1.0,
        rule: AdaptiveStepSize | None = None,
        carry_step_size: bool = True,
    ):
        if burn_in >= steps:
            raise ArgumentError("burn_in", f"must be < steps ({steps}), got {burn_in}")
        self.enabled, self.every, self.steps, self.burn_in = enabled, every, steps, burn_in
        self.step_size, self.batch_size, self.beta = float(step_size), batch_size, float(beta)
        self.rule = PaperStepSize() if rule is None else rule
        self.carry_step_size = carry_step_size


def is_backward_step(step: int, both_ways: bool) -> bool:
    """Odd iterations train on backward trajectories when both-ways training is on."""
    return both_ways and step % 2 == 1


def local_search_due(step: int, every: int) -> bool:
    """Local search runs before backward iteration `step` (odd) when a boundary k * every + 1 was
    reached since the previous backward iteration: steps 1, 101, 201, ... for every = 100."""
    return step == 1 or (step - 1) // every > (step - 3) // every


# ----- collectives (identity for one process) ---------------------------------------------
class Collectives:
    """What a sampler needs from the other ranks. `module` is the LightningModule (its trainer's
    strategy does the communication); one process needs none."""

    def __init__(self, module):
        self.module = module
        self.world, self.rank = module.world()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.world == 1 else self.module.trainer.strategy.reduce(t, reduce_op="sum")

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.world == 1 else self.module.trainer.strategy.reduce(t, reduce_op="mean")

    def broadcast(self, obj):
        return obj if self.world == 1 else self.module.trainer.strategy.broadcast(obj, src=0)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows (rank::world) of a global tensor."""
        return t[self.rank :: self.world]

    def gather_rows(self, t: torch.Tensor, n_global: int) -> torch.Tensor:
        """Inverse of `rows`: every rank's rows of a global set of n_global rows -> the set in its
        global order, on every rank (ranks may hold one row fewer; padded for the all_gather)."""
        if self.world == 1:
            return t
        per_rank = -(-n_global // self.world)
        if t.shape[0] < per_rank:
            t = torch.cat([t, t.new_zeros(per_rank - t.shape[0], *t.shape[1:])])
        gathered = self.module.all_gather(t.contiguous())  # [world, per_rank, ...]
        return gathered.transpose(0, 1).reshape(self.world * per_rank, *t.shape[1:])[:n_global]

    def gather_ragged(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Concatenate same-length tensors [m_r, ...] of every rank (m_r may differ), rank 0 first."""
        if self.world == 1:
            return tensors
        m = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
        counts = self.module.all_gather(m).reshape(-1).tolist()
        top = max(counts)
        out = []
        for t in tensors:
            padded = torch.cat([t, t.new_zeros(top - t.shape[0], *t.shape[1:])]) if t.shape[0] < top else t
            g = self.module.all_gather(padded.contiguous())  # [world, top, ...]
            out.append(torch.cat([g[r, :c] for r, c in enumerate(counts)]))
        return out


def merge_mala(result: MALAResult, n_chains: int, comm: Collectives) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept MALA samples and log R of every rank in the order one process running all
    `n_chains` chains produces them (by step, then global chain index), on every rank."""
    if comm.world == 1:
        return result.samples, result.log_r
    global_row = result.row_of * comm.world + comm.rank  # rank r holds global chains r, r + W, ...
    x, log_r, step, row = comm.gather_ragged([result.samples, result.log_r, result.step_of, global_row])
    order = torch.argsort(step * n_chains + row)
    return x[order], log_r[order]


def reduce_counts(comm: Collectives) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """MALA's [accepted, proposed] summed over ranks (the same step size everywhere)."""
    return None if comm.world == 1 else comm.sum
