"""Multiple Choice Learning diffusion: K expert score nets trained with a WTA-style rule.

Per step one x0, sigma and noise per sample, shared by all experts; the K experts run as one
stacked forward (`StackedExperts`), giving the [B, K] DSM loss matrix m (per-pixel mean, with
gradient). The assignment rule turns the routing losses (m * pixels, the reference's pixel sum)
into weights, and each expert minimises its weighted, per-expert normalised loss. Sampling
integrates the PF-ODE through a routing strategy (mixlab.mcl.routing).

Sparse path (`model.sparse`, default auto = on for one-hot rules: hard WTA, resilient MCL): the
loss matrix is computed without gradient (train mode, dropout on: the reference's routing
forward), then each expert runs one forward with gradient on its winners only (a second dropout
mask, as in the reference). Same objective and gradients as the dense path (without dropout).
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from omegaconf import DictConfig
from torch import nn

from mixlab.core.config import require
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.tensors import per_sample
from mixlab.core.validate import PositiveInt, checked
from mixlab.mcl.assignment import AssignmentRule, weighted_expert_losses
from mixlab.mcl.routing import Routing, SingleExpert
from mixlab.mcl.sparse import sparse_expert_losses, use_sparse
from mixlab.metrics.expert_stats import usage_shares
from mixlab.nets.stacked import StackedExperts, clip_grad_norm_per_expert
from mixlab.score.system import ScoreDiffusion


class _OneExpert(nn.Module):
    """Expert k of a StackedExperts seen as a plain net(x, c_noise) for the preconditioner."""

    def __init__(self, stacked: StackedExperts, k: int):
        super().__init__()
        self.stacked, self.k = [stacked], k  # a list: not a submodule (no duplicated parameters)

    def forward(self, x, c_noise):
        return self.stacked[0].expert(self.k, x, c_noise)


@dataclass
class MCLStep:
    """One training step's objective and what is logged about it (all [K] / [B, K] tensors)."""

    loss: torch.Tensor  # the objective (with gradient): sum of expert losses (+ head loss)
    expert_losses: torch.Tensor  # [K], times world size (DDP averages gradients over ranks)
    routing: torch.Tensor  # [B, K] per-pixel-mean DSM losses of the routing forward (no gradient)
    winners: torch.Tensor  # [B, K] one-hot, for the ExpertUsage callback
    scores: torch.Tensor | None = None  # [B, K] resilient heads' logits (with gradient)
    head_loss: torch.Tensor | None = None


class MCLDiffusion(ScoreDiffusion):
    """Args (beyond ScoreDiffusion's):
    assignment: HardWTA | AnnealedWTA | RelaxedWTA | ResilientMCL (mixlab.mcl.assignment).
    num_experts: K >= 1.
    vectorize: auto (vmap on CUDA, loop of parameter slices on CPU: faster there) | true | false.
    sparse: auto (for rules whose weights are one-hot) | true | false: route with a no-grad
        K-expert forward, then one forward/backward per expert on its winners only.
    normalization: per_expert (the reference) | batch (published annealed MCL).
    scorer: a net (x, c_noise) -> [B, 1], stacked K times as resilient MCL's scoring heads.
    routing: the Routing used by sample grids and `sample()` when none is given.
    """

    evaluator = "mcl"

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        super().check_config(cfg)
        target = str((cfg.model.get("assignment") or {}).get("_target_", ""))
        if target.endswith("AnnealedWTA"):
            require(
                (cfg.get("callbacks") or {}).get("temperature") is not None,
                "callbacks.temperature",
                "annealed WTA needs the TemperatureAnnealing callback (callbacks=mcl, or another model/assignment)",
            )

    @checked
    def __init__(
        self,
        net: nn.Module,
        assignment: AssignmentRule,
        num_experts: PositiveInt = 4,
        vectorize: Literal["auto", True, False] = "auto",
        normalization: Literal["per_expert", "batch"] = "per_expert",
        sparse: Literal["auto", True, False] = "auto",
        scorer: nn.Module | None = None,
        routing: Routing | None = None,
        **kwargs,
    ):
        if sparse is True and not assignment.one_hot:
            raise ArgumentError(
                "sparse",
                f"true needs one-hot weights (hard WTA, resilient MCL); {type(assignment).__name__} "
                "gives every expert a share of every sample: use sparse=auto or false",
            )
        if assignment.uses_scores and scorer is None:
            raise ArgumentError("scorer", f"{type(assignment).__name__} needs scoring heads (mixlab.nets.gating.ScoringHead)")
        super().__init__(net=StackedExperts(net, num_experts, vectorize=vectorize is True), **kwargs)
        self.num_experts, self.vectorize_mode = num_experts, str(vectorize)
        self.assignment, self.normalization = assignment, normalization
        self.sparse = use_sparse(sparse, assignment.one_hot)
        self.scorer = StackedExperts(scorer, num_experts, vectorize=vectorize is True) if assignment.uses_scores else None
        self.routing = routing or SingleExpert(0)
        self.temperature: float | None = None  # written by the TemperatureAnnealing callback
        self.gate: nn.Module | None = None  # a trained GatingNet, attached for `gated` routing
        self.register_buffer("usage_shares", torch.full((num_experts,), 1.0 / num_experts), persistent=False)

    @property
    def experts(self) -> StackedExperts:
        return self.model.net

    def _set_vectorize(self) -> None:
        if self.vectorize_mode == "auto":
            for stacked in (self.experts, self.scorer):
                if stacked is not None:
                    stacked.vectorize = self.device.type == "cuda"

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._set_vectorize()
        if self.assignment.uses_temperature and not any(
            type(cb).__name__ == "TemperatureAnnealing" for cb in self.trainer.callbacks
        ):
            raise ConfigError("callbacks.temperature", f"{type(self.assignment).__name__} needs a TemperatureAnnealing callback")

    # ----- training ---------------------------------------------------------------------
    def loss_matrix(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """[B, K] per-sample DSM loss (mean over pixels) of every expert, with gradient."""
        return self.loss_fn(self.model, x0, sigma, noise).transpose(0, 1)

    def scaled_input(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_sigma / sqrt(sigma^2 + sigma_data^2): unit-variance input for gates and heads."""
        return x / (per_sample(sigma, x) ** 2 + self.sigma_data**2).sqrt()

    def _global(self, t: torch.Tensor) -> torch.Tensor:
        world_size, _ = self.world()
        return self.trainer.strategy.reduce(t, reduce_op="sum") if world_size > 1 else t

    def expert_model(self, k: int) -> nn.Module:
        """Expert k alone behind the system's preconditioner: (x, sigma) -> eps_hat."""
        return self.precond(_OneExpert(self.experts, k))

    def step_losses(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> MCLStep:
        """The step's objective for this rank's samples, dense or sparse (see the module doc)."""
        with torch.no_grad() if self.sparse else contextlib.nullcontext():
            m = self.loss_matrix(x0, sigma, noise)  # [B, K]
        route = m.detach() * x0[0].numel()  # the reference routes on the pixel sum
        scores = None
        if self.scorer is not None:
            x = x0 + per_sample(sigma, x0) * noise
            scores = self.scorer(self.scaled_input(x, sigma), sigma.log() / 4).squeeze(-1).transpose(0, 1)  # [B, K]
        weights, winners = self.assignment(
            route, temperature=self.temperature, scores=None if scores is None else scores.detach()
        )
        world_size, _ = self.world()
        totals = weights.sum(0) if self.normalization == "per_expert" else torch.full_like(weights[0], weights.shape[0])
        totals = self._global(totals.detach())  # DDP averages gradients over ranks: global totals, times W
        if self.sparse:  # expert k's gradient forward on the samples it won, [n_k]
            expert_loss = lambda k, idx: self.loss_fn(self.expert_model(k), x0[idx], sigma[idx], noise[idx])  # noqa: E731
            expert_losses = sparse_expert_losses(expert_loss, weights, self.normalization, totals) * world_size
        else:
            expert_losses = weighted_expert_losses(m, weights, self.normalization, totals) * world_size
        step = MCLStep(expert_losses.sum(), expert_losses, m.detach(), winners, scores)
        if scores is not None:
            step.head_loss = self.assignment.head_loss(scores, route)
            step.loss = step.loss + step.head_loss
        return step

    def training_step(self, batch, batch_idx):
        x0 = self._prepare(batch[0])
        sigma, noise = self.draw_noise(x0, self.noise_generator(), batch_idx)
        step = self.step_losses(x0, sigma, noise)
        self.check_finite(step.loss)
        world_size, _ = self.world()
        if step.scores is not None:
            self.log("train/head_loss", step.head_loss, on_step=False, on_epoch=True, sync_dist=True)
            self.log(
                "train/head_acc",
                (step.scores.argmax(1) == step.routing.argmin(1)).float().mean(),
                on_step=False,
                on_epoch=True,
                sync_dist=True,
            )
        self.log("train/loss", step.routing.min(dim=1).values.mean(), prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/objective", step.loss.detach() / world_size, on_step=False, on_epoch=True, sync_dist=True)
        for k in range(self.num_experts):
            self.log(
                f"train/expert_{k}_loss",
                step.expert_losses[k].detach() / world_size,
                on_step=False,
                on_epoch=True,
                sync_dist=True,
            )
        return {"loss": step.loss, "usage": step.winners}

    def validation_step(self, batch, batch_idx):
        x0 = self._prepare(batch[0])
        sigma, noise = self.draw_noise(x0, self._val_gen)
        m = self.loss_matrix(x0, sigma, noise)
        self.log("val/loss", m.min(dim=1).values.mean(), prog_bar=True, on_epoch=True, sync_dist=True, batch_size=x0.shape[0])

    def configure_optimizers(self):
        params = list(self.model.parameters()) + (list(self.scorer.parameters()) if self.scorer is not None else [])
        optimizer = self.optimizer_factory(params=params)  # elementwise Adam on stacked tensors == K Adams
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Each expert (and the scoring heads together) clipped to its own global norm."""
        if not gradient_clip_val:
            return
        clip_grad_norm_per_expert(self.experts.per_expert_parameters(), float(gradient_clip_val))
        if self.scorer is not None:
            torch.nn.utils.clip_grad_norm_(self.scorer.parameters(), float(gradient_clip_val))

    # ----- the expert bank used by routings ---------------------------------------------
    def eps_all(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(x, sigma)  # [K, B, ...]

    def eps_expert(self, k: int, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.expert_model(k)(x, sigma)

    def eps_select(self, choice: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """eps_hat of expert choice[n] for each sample n, running each chosen expert once."""
        out = torch.empty_like(x)
        for k in choice.unique().tolist():
            idx = (choice == k).nonzero(as_tuple=True)[0]
            out[idx] = self.eps_expert(k, x[idx], sigma[idx])
        return out

    def gate_logits(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            raise ConfigError(
                "gate_ckpt", "this routing needs a trained gate: train one with experiment=mcl_k4_gate and pass gate_ckpt=PATH"
            )
        return self.gate(self.scaled_input(x, sigma), sigma.log() / 4)

    def expert_scores(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.scorer is None:
            raise ConfigError("strategy", "scored routing needs resilient MCL's scoring heads (experiment=mcl_k4_resilient)")
        return self.scorer(self.scaled_input(x, sigma), sigma.log() / 4).squeeze(-1).transpose(0, 1)

    def eps_function(self, batch_size: int, routing: Routing | None = None) -> Callable:
        """The routing's eps_hat for one batch of trajectories (default: the model's own)."""
        self._set_vectorize()
        return (routing or self.routing).start(self, batch_size)

    # ----- checkpoint -------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        for key, state in checkpoint.get("callbacks", {}).items():
            if key.startswith("ExpertUsage") and state.get("history"):
                self.usage_shares = usage_shares(torch.tensor(state["history"][-1], dtype=torch.float32))

    def sample_sets(self) -> dict[str, dict]:
        """Sample grids during training: the default routing, then one grid per expert."""
        return {"": {"routing": self.routing}, **{f"expert_{k}": {"routing": SingleExpert(k)} for k in range(self.num_experts)}}
