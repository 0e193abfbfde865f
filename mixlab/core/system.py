"""What every mixlab LightningModule shares: the run config stored in each checkpoint, a
non-finite-loss guard, a device-count-invariant noise stream, RNG state across resume, and the
hooks through which the method-free core talks to a method (its config checks, its evaluator,
its sample sets, whether it needs a data set)."""

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from mixlab.core.errors import ConfigError, MixlabError

SYSTEM_KEY = "model"  # where a run config holds its system: train.yaml's `model` group, which the pipeline builds


class NonFiniteLossError(MixlabError):
    """Training produced NaN/inf; raised before any checkpoint of the bad state is written."""


class MixlabSystem(L.LightningModule):
    """Base LightningModule. Subclasses draw training noise with `self.noise_generator()`.

    What the core asks of a system (override as needed):
        evaluator: name of its default evaluator, conf/evaluator/<name>.yaml (`evaluate.py ckpt=`).
        needs_data: False for systems that draw their own batches (they define train_dataloader).
        check_config(cfg): classmethod, checks the composed run config before anything is built.
        check_batch_split(n, a): the batch sizes the system owns split over n processes x a accumulation steps.
        sample_sets(): named extra keyword sets for `sample()` drawn by the SampleGrid callback.
        compiled_modules(): what `model.compile=true` compiles.
    A system is built from the run config's `model` node (SYSTEM_KEY); `config_key(arg)` names
    one of its arguments there, for checks that run after construction (in `setup`, say).
    """

    evaluator: str | None = None
    needs_data: bool = True

    def __init__(self, seed: int = 0, compile: bool = False):
        super().__init__()
        self.run_config: dict | None = None  # the composed Hydra config, set by the pipeline
        self.noise_seed = int(seed)
        self.compile_nets = bool(compile)
        self._noise_gen: torch.Generator | None = None
        self._pending_rng: dict | None = None
        self._step_draws: tuple[torch.Tensor, ...] | None = None

    # ----- what the core asks of a method -------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError naming the key for a bad value in the composed config (no data or
        training has happened yet). Constructors check their own arguments as well."""

    def check_batch_split(self, world_size: int, accumulate: int = 1) -> None:
        """Batch sizes configured on the system (data-free systems) must split over the ranks
        and accumulation steps (`mixlab.core.distributed.per_device_batch_size`)."""

    @staticmethod
    def config_key(arg: str) -> str:
        """The run-config key of this system's argument `arg` (`model.<arg>`)."""
        return f"{SYSTEM_KEY}.{arg}"

    def sample_sets(self) -> dict[str, dict]:
        """{name: extra sample() keywords}: the sample grids drawn during training ('' = default)."""
        return {"": {}}

    def compiled_modules(self) -> list[torch.nn.Module]:
        """Modules whose forward `model.compile=true` wraps in torch.compile (in place, so
        parameter names and checkpoints are unchanged)."""
        return []

    def on_fit_start(self) -> None:
        """Subclasses that override this call super().on_fit_start()."""
        if self.compile_nets and not getattr(self, "_compiled", False):
            modules = self.compiled_modules()
            if not modules:
                raise ConfigError(self.config_key("compile"), f"{type(self).__name__} does not name modules to compile")
            for module in modules:
                module.compile()
            self._compiled = True

    # ----- randomness -------------------------------------------------------------------
    def noise_generator(self) -> torch.Generator:
        """A generator owned by the run (seeded once, checkpointed), on the module's device.

        It is the same on every rank: `rank_slice` then takes each rank's share of a global
        draw, so N devices x B/N samples see exactly the noise that 1 device x B would.
        """
        if self._noise_gen is None or self._noise_gen.device != self.device:
            self._noise_gen = torch.Generator(device=self.device).manual_seed(self.noise_seed)
            if self._pending_rng is not None:
                self._noise_gen.set_state(self._pending_rng["noise"])
        return self._noise_gen

    def world(self) -> tuple[int, int]:
        """(world_size, global_rank), (1, 0) without a trainer."""
        if self._trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def step_draw(self, batch_idx: int, rows: int, draw: Callable[[int], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """This rank's `rows` rows, for this micro-batch, of tensors drawn once per optimizer step
        for its whole global batch (`draw(n)` returns tensors with n rows, n = world x
        accumulation x rows): N devices x A accumulation steps then see the noise 1 device sees.
        Micro-batch a of the step holds rows [a W rows, (a + 1) W rows), interleaved over the
        ranks like the data samplers (mixlab.data.base)."""
        world_size, rank = self.world()
        accumulate = int(self.trainer.accumulate_grad_batches) if self._trainer is not None else 1
        micro = batch_idx % accumulate
        if micro == 0 or self._step_draws is None:
            self._step_draws = draw(world_size * accumulate * rows)
        block = slice(micro * world_size * rows, (micro + 1) * world_size * rows)
        return tuple(t[block][rank::world_size] for t in self._step_draws)

    def rank_slice(self, global_draw: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor drawn for the global batch (matches DistributedSampler's
        interleaving: rank r holds global positions r, r + W, r + 2W, ...)."""
        world_size, rank = self.world()
        return global_draw[rank::world_size]

    def on_train_start(self) -> None:
        if self._pending_rng is not None:  # dropout etc. continue exactly after a resume
            torch.set_rng_state(self._pending_rng["torch"])
            if torch.cuda.is_available() and self._pending_rng.get("cuda") is not None:
                torch.cuda.set_rng_state_all(self._pending_rng["cuda"])

    # ----- guards -----------------------------------------------------------------------
    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop the run (all ranks) with a clear message on a NaN/inf loss."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteLossError(
                f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}); "
                "the run stopped and no checkpoint of this state was written. "
                "Lower model.optimizer.lr or check the data; resume with ckpt_path=last."
            )

    # ----- checkpoint -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mixlab_config"] = self.run_config
        checkpoint["mixlab_rng"] = {
            "noise": self.noise_generator().get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_config = checkpoint.get("mixlab_config", self.run_config)
        self._pending_rng = checkpoint.get("mixlab_rng")
        self._noise_gen = None
