"""VE score diffusion (the seed's baseline): DSM training, PF-ODE sampling."""

from collections.abc import Callable, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from mixlab.core.config import require
from mixlab.core.errors import ArgumentError
from mixlab.core.system import MixlabSystem
from mixlab.core.validate import PositiveFloat, PositiveInt, check_value, checked
from mixlab.score.precond import EpsilonPrecond
from mixlab.score.schedule import SigmaGrid
from mixlab.score.solvers import ODESampling, Solver, sample


def check_sample_grid(cfg: DictConfig) -> None:
    """The sample-grid callback calls `sample()` with its options: a solver / grid node
    (`_target_`, as model.sampler has) and steps >= 1."""
    node = (cfg.get("callbacks") or {}).get("sample_grid")
    if node is None:
        return
    for name in ("solver", "grid"):
        value = node.get(name)
        require(
            value is None or (isinstance(value, DictConfig) and "_target_" in value),
            f"callbacks.sample_grid.{name}",
            f"must be a node with a _target_ (e.g. {{_target_: mixlab.score.solvers.Heun}}), got {value!r}",
        )
    steps = node.get("steps")
    check_value(steps, PositiveInt | None, "callbacks.sample_grid.steps")


class ScoreDiffusion(MixlabSystem):
    """One score net trained with a per-sample DSM loss; samples with Euler/Heun PF-ODE.

    Args:
        net: raw network F(x, c_noise) (e.g. ScoreNet).
        loss: callable (model, x0, sigma, noise) -> [B] (EpsilonLoss, EDMLoss).
        sigma_sampler: callable (n, generator, device) -> sigma [n] (LogUniformSigma, ...).
        optimizer / scheduler: partials taking params / optimizer (scheduler may be None).
        precond: partial taking the net: EpsilonPrecond (the seed) or EDMPrecond (model/precond=edm).
        sampler: ODESampling, the defaults of `sample()`: solver, steps, grid.
        compile: torch.compile the preconditioned net's forward (model.compile=true).
    """

    evaluator = "fid"

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        check_sample_grid(cfg)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.model]

    @checked
    def __init__(
        self,
        net: nn.Module,
        loss: Callable,
        sigma_sampler: Callable,
        optimizer: Callable,
        scheduler: Callable | None = None,
        precond: Callable[[nn.Module], nn.Module] | str = EpsilonPrecond,
        sigma_min: PositiveFloat = 0.01,
        sigma_max: PositiveFloat = 80.0,
        sigma_data: PositiveFloat = 0.5,
        image_shape: Sequence[PositiveInt] = (1, 28, 28),
        sampler: ODESampling | None = None,
        channels_last: bool = False,
        seed: int = 0,
        compile: bool = False,
    ):
        if isinstance(precond, str):  # the config group's option name given as a value
            raise ArgumentError("precond", f"a preconditioner, not the string '{precond}': choose one with model/precond=eps|edm")
        if sigma_min >= sigma_max:
            raise ArgumentError("sigma_min", f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        super().__init__(seed=seed, compile=compile)
        self.precond, self.sigma_data = precond, sigma_data
        self.model = precond(net)
        self.loss_fn, self.sigma_sampler = loss, sigma_sampler
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.image_shape = tuple(image_shape)
        self.sampler_defaults = (sampler or ODESampling()).options()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """eps_hat(x, sigma) = dx/dsigma of the PF-ODE."""
        return self.model(x, sigma)

    # ----- training ---------------------------------------------------------------------
    def draw_noise(
        self, x0: torch.Tensor, generator: torch.Generator, batch_idx: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma [B] and eps [B, C, H, W] for this rank's share of the global batch. Training
        (`batch_idx` given) draws once per optimizer step, for all devices and accumulation
        steps (`step_draw`); validation draws per batch."""

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            sigma = self.sigma_sampler(n, generator=generator, device=x0.device)
            return sigma, torch.randn((n, *x0.shape[1:]), generator=generator, device=x0.device)

        if batch_idx is not None:
            return self.step_draw(batch_idx, x0.shape[0], draw)
        sigma, noise = draw(x0.shape[0] * self.world()[0])
        return self.rank_slice(sigma), self.rank_slice(noise)

    def _prepare(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.contiguous(memory_format=torch.channels_last) if self.channels_last else x0

    def training_step(self, batch, batch_idx):
        x0 = self._prepare(batch[0])
        sigma, noise = self.draw_noise(x0, self.noise_generator(), batch_idx)
        loss = self.loss_fn(self.model, x0, sigma, noise).mean()
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_gen = torch.Generator(device=self.device).manual_seed(12345)  # same noise every epoch

    def validation_step(self, batch, batch_idx):
        x0 = self._prepare(batch[0])
        sigma, noise = self.draw_noise(x0, self._val_gen)
        loss = self.loss_fn(self.model, x0, sigma, noise).mean()
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=x0.shape[0])

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}

    # ----- sampling ---------------------------------------------------------------------
    def eps_function(self, batch_size: int) -> Callable:
        """What the ODE solver integrates for one batch of trajectories: eps_hat(x, sigma).
        Subclasses may take keyword options (MCL: the routing), passed through `sample()`."""
        return self.model

    def sigmas(self, steps: int, grid: SigmaGrid) -> torch.Tensor:
        return grid(steps, self.sigma_min, self.sigma_max)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        solver: Solver | None = None,
        steps: int | None = None,
        grid: SigmaGrid | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
        **options,
    ) -> torch.Tensor:
        """n images in [-1, 1] on CPU, [n, C, H, W], integrated in chunks of batch_size.
        solver / steps / grid default to the system's `sampler`; `options` go to `eps_function`
        (a mixture system's routing)."""
        opts = {**self.sampler_defaults, **{k: v for k, v in dict(solver=solver, steps=steps, grid=grid).items() if v}}
        sigmas = self.sigmas(opts["steps"], opts["grid"])
        was_training = self.model.training
        self.model.eval()
        chunks = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            x = sample(self.eps_function(m, **options), (m, *self.image_shape), sigmas, opts["solver"], generator, self.device)
            chunks.append(x.float().cpu())
        self.model.train(was_training)
        return torch.cat(chunks)
