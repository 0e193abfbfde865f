"""Inference routings: which expert's eps_hat drives the PF-ODE, per network call and sample.

A routing is started once per batch of trajectories (`start(bank, batch_size)`) and then called
like any eps function, `routing(x, sigma) -> eps_hat`, by the Euler/Heun samplers. The `bank`
(an MCL system) provides:
    num_experts; eps_all(x, sigma) -> [K, B, ...]; eps_select(choice [B], x, sigma) -> [B, ...]
    gate_logits(x, sigma) -> [B, K] (learned gate); expert_scores(x, sigma) -> [B, K]
    (resilient heads); usage_shares -> [K] (training win rates).
Randomness comes from the routing's own CPU generator (seeded), so every strategy starts
from the same x_T (the sampler's generator) and is reproducible.
A routing is chosen by config `_target_` (model.routing; the evaluators' `strategy=NAME` picks
`routings.NAME` of conf/evaluator/routings/mcl.yaml).
"""

import abc
from typing import Literal

import torch

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import NonNegativeInt, checked


class Routing(abc.ABC):
    """Base class: keeps the bank and a seeded generator for the current batch."""

    name = "routing"
    evaluations_per_call = 1  # expert forwards per network call per sample (cost)

    @checked
    def __init__(self, seed: int = 0):
        self.seed = seed
        self._generator: torch.Generator | None = None

    @property
    def generator(self) -> torch.Generator:
        """Created on first use and continued across batches (not pickled: ddp_spawn)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_generator": None, "bank": None}

    @property
    def tag(self) -> str:
        """A file-name-safe label that tells configurations apart (e.g. single_expert2)."""
        return self.name

    def start(self, bank, batch_size: int) -> "Routing":
        self.bank, self.batch_size = bank, batch_size
        return self

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """eps_hat [B, ...] for the current states x [B, ...] at noise levels sigma [B]."""

    def _randint(self, high: int, size: tuple[int, ...], device) -> torch.Tensor:
        return torch.randint(high, size, generator=self.generator).to(device)


class SingleExpert(Routing):
    """One fixed expert for the whole trajectory (the reference's default is expert 0)."""

    name = "single_expert"

    @checked
    def __init__(self, expert: NonNegativeInt = 0, seed: int = 0):
        super().__init__(seed)
        self.expert = expert

    @property
    def tag(self) -> str:
        return f"{self.name}{self.expert}"

    def start(self, bank, batch_size):
        if not 0 <= self.expert < bank.num_experts:
            raise ArgumentError(
                "expert",
                f"expert {self.expert} is out of range for a model with {bank.num_experts} experts (0..{bank.num_experts - 1})",
            )
        return super().start(bank, batch_size)

    def __call__(self, x, sigma):
        return self.bank.eps_select(torch.full((x.shape[0],), self.expert, device=x.device), x, sigma)


class RandomExpert(Routing):
    """A uniformly random expert at every network call: one for the whole batch (`per=batch`,
    the reference) or one per sample (`per=sample`)."""

    name = "random_expert"

    @checked
    def __init__(self, per: Literal["batch", "sample"] = "batch", seed: int = 0):
        super().__init__(seed)
        self.per = per

    @property
    def tag(self) -> str:
        return f"{self.name}_per_{self.per}"

    def __call__(self, x, sigma):
        n = 1 if self.per == "batch" else x.shape[0]
        choice = self._randint(self.bank.num_experts, (n,), x.device).expand(x.shape[0])
        return self.bank.eps_select(choice, x, sigma)


class BestExpert(Routing):
    """All K experts; per sample the smallest predicted-noise norm ||eps_hat_k||_2 wins."""

    name = "best_expert"

    def __call__(self, x, sigma):
        eps = self.bank.eps_all(x, sigma)  # [K, B, ...]
        choice = eps.flatten(2).norm(dim=2).argmin(dim=0)  # [B]
        return eps[choice, torch.arange(x.shape[0], device=x.device)]

    @property
    def evaluations_per_call(self):
        return self.bank.num_experts


class MixtureScore(Routing):
    """The average of the K experts' eps_hat (a mixture in eps / score space)."""

    name = "mixture_score"

    def __call__(self, x, sigma):
        return self.bank.eps_all(x, sigma).mean(dim=0)


class Gated(Routing):
    """Argmax of a learned router per network call and sample: the post-hoc gate
    (`source=gate`, the reference's `gated`) or resilient MCL's scoring heads (`source=scores`,
    the `scored` routing)."""

    @checked
    def __init__(self, source: Literal["gate", "scores"] = "gate", seed: int = 0):
        super().__init__(seed)
        self.source = source
        self.name = "gated" if source == "gate" else "scored"

    def logits(self, x, sigma):
        return self.bank.gate_logits(x, sigma) if self.source == "gate" else self.bank.expert_scores(x, sigma)

    def __call__(self, x, sigma):
        return self.bank.eps_select(self.logits(x, sigma).argmax(dim=1), x, sigma)


class Sticky(Gated):
    """Coherent switching (ours): follow the gate / heads like `gated`, but a sample leaves its
    current expert only when another one's gate probability exceeds the current one's by
    `margin`. Experts that specialise by noise level still hand over along sigma, while the
    call-to-call flip-flopping that breaks trajectories is suppressed (margin 0 == `gated`)."""

    @checked
    def __init__(self, source: Literal["gate", "scores"] = "gate", margin: float = 0.2, seed: int = 0):
        super().__init__(source, seed)
        self.margin, self.name = margin, f"sticky_{'gate' if source == 'gate' else 'scores'}"

    def start(self, bank, batch_size):
        self.current, self.switches = None, 0
        return super().start(bank, batch_size)

    def __call__(self, x, sigma):
        probs = torch.softmax(self.logits(x, sigma), dim=1)
        best = probs.argmax(dim=1)
        if self.current is None:
            self.current = best
        else:
            gain = probs.gather(1, best[:, None]) - probs.gather(1, self.current[:, None])
            switch = gain.squeeze(1) > self.margin
            self.switches += int(switch.sum())
            self.current = torch.where(switch, best, self.current)
        return self.bank.eps_select(self.current, x, sigma)


class Committed(Routing):
    """Coherent trajectories (ours): each sample picks one expert at its first network call and
    keeps it to sigma = 0. `source=usage` draws k ~ Categorical(training win rates), i.e. samples
    the mixture sum_k pi_k p_k with pi = how much of the data each expert won; `source=gate` /
    `scores` take the argmax of the gate / resilient heads at (x_T, sigma_max)."""

    @checked
    def __init__(self, source: Literal["usage", "gate", "scores"] = "usage", seed: int = 0):
        super().__init__(seed)
        self.source, self.name = source, f"committed_{source}"

    def start(self, bank, batch_size):
        self.choice = None
        return super().start(bank, batch_size)

    def _choose(self, x, sigma):
        if self.source == "usage":
            probs = self.bank.usage_shares.float().cpu()
            return torch.multinomial(probs, x.shape[0], replacement=True, generator=self.generator).to(x.device)
        router = self.bank.gate_logits if self.source == "gate" else self.bank.expert_scores
        return router(x, sigma).argmax(dim=1)

    def __call__(self, x, sigma):
        if self.choice is None:
            self.choice = self._choose(x, sigma)
        return self.bank.eps_select(self.choice, x, sigma)
