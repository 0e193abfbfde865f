"""Off-policy diffusion samplers for unnormalised densities (Sendera et al. 2024) as a mixlab system.

`DiffusionSampler` trains a Gaussian forward policy p_F from x_0 = 0 to x_1 ~ R / Z in T steps
against the fixed Brownian-bridge p_B with one objective (TB, VarGrad, DB, SubTB, FL-SubTB, PIS:
model/objective), optionally with exploration, the Langevin parametrisation (model/policy=langevin),
both-ways training from a replay buffer and local search (parallel MALA) into a second buffer.

It needs no data set: its loaders yield step indices (`eval_every` iterations per epoch, then a
validation: `eval_n` trajectories without exploration, log Z estimates, W2 to exact samples).
`model.batch_size` is the global batch of trajectories, split over the ranks; every random draw
(rollout noise, buffer batches, MALA noise) is made for the global batch from the run's generator
and sliced, buffers are replicated, so N processes reproduce one (see `training.py`).
Nets arrive as partials (`_partial_: true`) and are completed with the energy's dimension.
"""

import importlib
import inspect
from collections.abc import Callable
from typing import Annotated

import torch
from omegaconf import DictConfig
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from mixlab.core.config import require
from mixlab.core.distributed import per_device_batch_size
from mixlab.core.errors import ArgumentError, ConfigError
from mixlab.core.system import MixlabSystem
from mixlab.core.validate import PositiveFloat, PositiveInt, checked
from mixlab.samplers.buffer import ReplayBuffer
from mixlab.samplers.energies import Energy
from mixlab.samplers.local_search import mala
from mixlab.samplers.metrics import log_weights, sampler_metrics
from mixlab.samplers.objectives import Objective
from mixlab.samplers.rollout import DiffusionRollout, Exploration, RankNoise
from mixlab.samplers.training import (
    Collectives,
    LocalSearchSettings,
    StepIndices,
    is_backward_step,
    local_search_due,
    merge_mala,
    reduce_counts,
)

VAL_SEED = 12345  # validation trajectories (the same noise every evaluation); exact samples: VAL_SEED + 1
FP32 = ("32", "32-true", "64", "64-true")


def _complete(net: Callable | None, dim: int, arg: str, **extra) -> nn.Module | None:
    """A built module as is, a partial (Hydra `_partial_: true`) called with dim= and those of
    `extra` its signature takes (its argument errors named under `arg`; built from a config, the
    partial names its full key itself)."""
    if net is None or isinstance(net, nn.Module):
        return net
    params = inspect.signature(net).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        extra = {k: v for k, v in extra.items() if k in params}
    try:
        return net(dim=dim, **extra)
    except ArgumentError as err:
        raise ArgumentError(f"{arg}.{err.arg}", err.problem) from None


def _target_class(node, key: str, base: type) -> None:
    """The node's `_target_` must name a subclass of `base` (checked before Hydra tries to build it)."""
    target = str(node.get("_target_")) if isinstance(node, DictConfig) and node.get("_target_") else ""
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        group = key.rsplit(".", 1)[-1]
        raise ConfigError(
            f"{key}._target_",
            f"unknown {group} {target!r} (pick one with model/{group}=NAME, or name a subclass "
            f"of {base.__module__}.{base.__name__})",
        )


class DiffusionSampler(MixlabSystem):
    """Args (conf/model/sampler.yaml):
        energy: the target (mixlab.samplers.energies / lgcp). objective: mixlab.samplers.objectives.
        policy / flow: partials of nets taking dim (mixlab.samplers.nets / langevin); flow for DB / SubTB.
        optimizer: partial of torch.optim (lr = the policy's); lr_log_z / lr_flow: the other groups.
        batch_size: global trajectories per iteration. T, sigma2, learn_variance, log_var_range,
        vectorize: the rollout (DiffusionRollout). exploration: Exploration.
        both_ways: alternate forward / backward iterations (forced on by local search).
        local_search: LocalSearchSettings. buffer: a ReplayBuffer (empty; the LS buffer is a copy of it).
        eval_every / eval_n / eval_chunk: iterations per validation, its trajectories, rows per rollout call.
    PIS (a reparametrised objective) trains on its own forward rollouts: no local search, both-ways
    training, exploration or vectorize=true.
    """

    evaluator = "sampler"
    needs_data = False

    @classmethod
    def check_config(cls, cfg) -> None:
        """What no constructor can check: `_target_`s that are not an energy / objective class
        (Hydra would fail to build them), and the trainer settings the sampler needs."""
        _target_class(cfg.model.get("energy"), "model.energy", Energy)
        _target_class(cfg.model.get("objective"), "model.objective", Objective)
        precision = str(cfg.trainer.get("precision", "32-true"))
        require(
            precision in FP32,
            "trainer.precision",
            f"the samplers train in fp32 (log-densities of hundreds and sums over 100 steps), got {precision!r}; use 32-true",
        )
        accumulate = cfg.trainer.get("accumulate_grad_batches") or 1
        require(
            accumulate == 1,
            "trainer.accumulate_grad_batches",
            f"a sampler iteration is one optimizer step (forward/backward alternate by step), got {accumulate!r}; "
            "raise model.batch_size instead",
        )

    @checked
    def __init__(
        self,
        energy: Energy,
        objective: Objective,
        policy: Callable,
        optimizer: Callable,
        flow: Callable | None = None,
        batch_size: PositiveInt = 300,
        T=100,
        sigma2=1.0,
        learn_variance=False,
        log_var_range=4.0,
        vectorize="auto",
        exploration: Exploration | None = None,
        both_ways: bool = False,
        local_search: LocalSearchSettings | None = None,
        buffer: ReplayBuffer | None = None,
        lr_log_z: PositiveFloat = 0.1,
        lr_flow: PositiveFloat = 0.01,
        eval_every: PositiveInt = 100,
        eval_n: Annotated[int, Field(ge=2)] = 2000,
        eval_chunk: PositiveInt = 500,
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__(seed=seed, compile=compile)
        self.energy, self.objective = energy, objective
        self.rollout = DiffusionRollout(T, sigma2, learn_variance, log_var_range, vectorize)
        self.exploration = Exploration() if exploration is None else exploration
        self.ls = LocalSearchSettings() if local_search is None else local_search
        self.both_ways = both_ways or self.ls.enabled
        if objective.reparametrised:  # PIS differentiates through its own forward rollouts
            for arg, conflict, problem in (
                ("local_search.enabled", self.ls.enabled, "local search (backward training from a buffer) does not apply"),
                ("both_ways", both_ways, "it trains on forward rollouts only"),
                ("exploration.factor", self.exploration.factor > 0, "exploration does not apply (set 0)"),
            ):
                if conflict:
                    raise ArgumentError(arg, f"{objective.name} differentiates through its own forward rollouts; {problem}")
            self.rollout.check(reparametrise=True)
        try:
            objective.bind(energy.dim)
        except ArgumentError as err:
            raise ArgumentError(f"objective.{err.arg}", err.problem) from None
        self.policy = _complete(policy, energy.dim, "policy")
        self.flow = _complete(flow, energy.dim, "flow", policy=self.policy)  # a flow may share the policy's embeddings
        objective.check(self.flow)
        self.log_z = nn.Parameter(torch.zeros(())) if objective.needs_log_z else None
        buffer = ReplayBuffer() if buffer is None else buffer  # (an empty buffer is falsy)
        self.buffer = buffer if self.both_ways else None  # terminal states of forward rollouts
        self.ls_buffer = buffer.empty_copy() if self.ls.enabled else None  # accepted MALA proposals
        self.ls_step_size, self.ls_stats = self.ls.step_size, {}
        self.optimizer_factory = optimizer
        self.lr_log_z, self.lr_flow = float(lr_log_z), float(lr_flow)
        self.batch_size, self.eval_every, self.eval_n, self.eval_chunk = batch_size, eval_every, eval_n, eval_chunk
        self.last_eval: dict | None = None  # the latest validation's samples (figure callback)
        self._val_truth: torch.Tensor | None = None

    # ----- what the core asks ---------------------------------------------------------------
    def check_batch_split(self, world_size: int, accumulate: int = 1) -> None:
        per_device_batch_size(self.batch_size, world_size, key="model.batch_size", accumulate=accumulate)

    def compiled_modules(self) -> list[nn.Module]:
        return [m for m in (self.policy, self.flow) if m is not None]

    def train_dataloader(self):
        return DataLoader(StepIndices(self.eval_every), batch_size=1)

    def val_dataloader(self):
        return DataLoader(StepIndices(1), batch_size=1)

    def setup(self, stage: str) -> None:
        self.energy.prepare()  # LGCP: reads the points; missing data -> one line naming `make data-lgcp`

    def configure_optimizers(self):
        groups = [{"params": list(self.policy.parameters())}]
        if self.log_z is not None:
            groups.append({"params": [self.log_z], "lr": self.lr_log_z})
        if self.flow is not None:
            groups.append({"params": list(self.flow.parameters()), "lr": self.lr_flow})
        return self.optimizer_factory(params=groups)

    # ----- training ---------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        step, comm, gen = self.global_step, Collectives(self), self.noise_generator()
        noise = RankNoise(gen, self.batch_size, comm.rank, comm.world)
        if is_backward_step(step, self.both_ways):
            if self.ls.enabled and local_search_due(step, self.ls.every):
                self.local_search(comm, gen)
            source = self.ls_buffer if self.ls_buffer is not None and len(self.ls_buffer) else self.buffer
            x1, _ = source.sample(self.batch_size, gen)  # the global batch, the same on every rank
            traj = self.rollout.backward(self.policy, self.energy, comm.rows(x1), noise, flow=self.flow)
        else:
            eps = self.exploration(step)
            traj = self.rollout.forward(
                self.policy, self.energy, noise, flow=self.flow, exploration=eps, reparametrise=self.objective.reparametrised
            )
            if self.buffer is not None:  # replicated: every rank adds the global batch in its global order
                terminal = traj.states[:, -1].detach()
                self.buffer.add(
                    comm.gather_rows(terminal, self.batch_size), comm.gather_rows(traj.log_r.detach(), self.batch_size)
                )
            self.log("train/exploration", eps, on_step=True, on_epoch=False)
        loss = self.objective(**traj.terms(), log_z=self.log_z, all_reduce_mean=comm.mean if comm.world > 1 else None)
        if self.objective.batch_sum:
            loss = loss * comm.world  # DDP averages the ranks' gradients; a batch sum must stay a sum
        self.check_finite(loss)
        self.log(
            "train/loss",
            loss.detach() / (comm.world if self.objective.batch_sum else 1),
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
        )
        if self.log_z is not None:
            self.log("train/log_z", self.log_z.detach(), on_step=True, on_epoch=False)
        if self.buffer is not None:
            self.log("train/buffer_size", float(len(self.buffer)), on_step=True, on_epoch=False)
        return loss

    @torch.no_grad()
    def local_search(self, comm: Collectives, gen: torch.Generator) -> None:
        """MALA from a prioritised replay-buffer batch (drawn globally, chains sliced over the
        ranks); the kept proposals of all ranks go to the replicated LS buffer in one order."""
        x, _ = self.buffer.sample(self.ls.batch_size, gen)
        noise = RankNoise(gen, self.ls.batch_size, comm.rank, comm.world)
        eta = self.ls_step_size if self.ls.carry_step_size else self.ls.step_size
        result = mala(
            self.energy,
            comm.rows(x),
            self.ls.steps,
            self.ls.burn_in,
            eta,
            self.ls.rule,
            reduce=reduce_counts(comm),
            beta=self.ls.beta,
            noise=noise,
        )
        self.ls_buffer.add(*merge_mala(result, self.ls.batch_size, comm))
        self.ls_step_size = result.step_size
        self.ls_stats = {
            "acceptance": result.acceptance,
            "step_size": result.step_size,
            "calls": self.ls_stats.get("calls", 0) + 1,
        }
        self.log("train/ls_acceptance", result.acceptance, on_step=True, on_epoch=False)
        self.log("train/ls_step_size", result.step_size, on_step=True, on_epoch=False)
        self.log("train/ls_buffer_size", float(len(self.ls_buffer)), on_step=True, on_epoch=False)

    # ----- sampling and evaluation ------------------------------------------------------
    @torch.no_grad()
    def sample_trajectories(self, n: int, generator: torch.Generator, chunk: int | None = None) -> dict:
        """n trajectories of the policy (no exploration), in chunks of `chunk` rows whose noise is
        drawn for the global chunk: {x [n,d], log_w [n], log_r [n]} on every rank (ranks split
        each chunk and gather)."""
        comm, chunk = Collectives(self), chunk or self.eval_chunk
        parts = {"x": [], "log_w": [], "log_r": []}
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            traj = self.rollout.forward(self.policy, self.energy, RankNoise(generator, m, comm.rank, comm.world))
            local = {"x": traj.states[:, -1], "log_w": log_weights(traj.log_r, traj.log_pf, traj.log_pb), "log_r": traj.log_r}
            for key, value in local.items():
                parts[key].append(comm.gather_rows(value, m))
        return {key: torch.cat(value) for key, value in parts.items()}

    @torch.no_grad()
    def backward_log_weights(self, x1: torch.Tensor, generator: torch.Generator, chunk: int | None = None) -> torch.Tensor:
        """log w [n] of Brownian-bridge trajectories ending at the global set x1 [n,d] (their mean
        over exact target samples is the EUBO)."""
        comm, chunk = Collectives(self), chunk or self.eval_chunk
        out = []
        for start in range(0, len(x1), chunk):
            block = x1[start : start + chunk].to(self.device)
            traj = self.rollout.backward(
                self.policy, self.energy, comm.rows(block), RankNoise(generator, len(block), comm.rank, comm.world)
            )
            out.append(comm.gather_rows(log_weights(traj.log_r, traj.log_pf, traj.log_pb), len(block)))
        return torch.cat(out)

    def evaluation(self, n: int, seed: int, truth: torch.Tensor | None, chunk: int | None = None) -> dict:
        """Metrics of n fresh trajectories (noise seed `seed`) against exact samples `truth` (or
        None): {metrics: {...}, x [n,d], log_w [n]}. W2 is computed on rank 0 and broadcast."""
        comm = Collectives(self)
        out = self.sample_trajectories(n, torch.Generator(device=self.device).manual_seed(seed), chunk)
        eubo_w = None
        if truth is not None:
            eubo_w = self.backward_log_weights(truth, torch.Generator(device=self.device).manual_seed(seed + 2), chunk)
        metrics = sampler_metrics(self.energy, out["x"], out["log_w"], truth, eubo_w, w2=comm.rank == 0)
        if comm.world > 1 and truth is not None:
            metrics["w2"] = comm.broadcast(metrics.get("w2"))
        if self.log_z is not None:
            metrics["log_z_learned"] = float(self.log_z.detach())
        return {"metrics": metrics, **out}

    def validation_truth(self) -> torch.Tensor | None:
        """eval_n exact target samples, drawn once per process from a fixed seed (None: no sampler)."""
        if self._val_truth is None or self._val_truth.device != self.device:
            self._val_truth = self.energy.sample(self.eval_n, torch.Generator(device=self.device).manual_seed(VAL_SEED + 1))
        return self._val_truth

    def validation_step(self, batch, batch_idx):
        truth = self.validation_truth()
        result = self.evaluation(self.eval_n, VAL_SEED, truth)
        metrics = result["metrics"]
        self.log("val/loss", -metrics["log_z_hat"], prog_bar=True, sync_dist=True, batch_size=self.eval_n)  # -ELBO per trajectory
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and value is not None:
                self.log(f"val/{key}", float(value), sync_dist=True, batch_size=self.eval_n)
        self.last_eval = {
            "x": result["x"].cpu(),
            "truth": None if truth is None else truth.cpu(),
            "step": self.global_step,
            "metrics": metrics,
        }

    # ----- checkpoint: buffers, MALA step size (RNG and weights: the base class / Lightning) ----
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["sampler_state"] = {
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "ls_buffer": self.ls_buffer.state_dict() if self.ls_buffer is not None else None,
            "ls_step_size": self.ls_step_size,
            "ls_stats": dict(self.ls_stats),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("sampler_state") or {}
        for name in ("buffer", "ls_buffer"):
            if getattr(self, name) is not None and state.get(name) is not None:
                getattr(self, name).load_state_dict(state[name])
        self.ls_step_size = float(state.get("ls_step_size", self.ls_step_size))
        self.ls_stats = dict(state.get("ls_stats", {}))

    def on_train_start(self) -> None:
        super().on_train_start()
        for buf in (self.buffer, self.ls_buffer):
            if buf is not None:
                buf.to(self.device)
