"""VE score diffusion (the seed's baseline): DSM training, PF-ODE sampling."""

from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from mixlab.core.config import check_choice, check_positive_int, require
from mixlab.core.system import MixlabSystem
from mixlab.score.precond import EDMPrecond, EpsilonPrecond
from mixlab.score.schedule import SIGMA_GRIDS, sigma_grid
from mixlab.score.solvers import SOLVERS, sample

PRECONDS: dict[str, Callable[[nn.Module, float], nn.Module]] = {
    "eps": lambda net, sigma_data: EpsilonPrecond(net),
    "edm": lambda net, sigma_data: EDMPrecond(net, sigma_data),
}


def check_sampling(node, prefix: str) -> None:
    """solver / steps / grid of a sampling block (model.sampler, callbacks.sample_grid, evaluator)."""
    if node is None:
        return
    key = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: name)
    if "solver" in node:
        check_choice(node.solver, list(SOLVERS), key("solver"))
    if "steps" in node:
        check_positive_int(node.steps, key("steps"))
    if "grid" in node:
        check_choice(node.grid, list(SIGMA_GRIDS), key("grid"))


class ScoreDiffusion(MixlabSystem):
    """One score net trained with a per-sample DSM loss; samples with Euler/Heun PF-ODE.

    Args:
        net: raw network F(x, c_noise) (e.g. ScoreNet).
        loss: callable (model, x0, sigma, noise) -> [B] (EpsilonLoss, EDMLoss).
        sigma_sampler: callable (n, generator, device) -> sigma [n] (LogUniformSigma, ...).
        optimizer / scheduler: partials taking params / optimizer (scheduler may be None).
        precond: `eps` (seed: raw input, eps output) or `edm` (Karras et al. preconditioning).
        sampler: defaults for `sample()`: solver, steps, grid (geometric | karras).
        compile: torch.compile the preconditioned net's forward (model.compile=true).
    """

    evaluator = "fid"

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        model = cfg.model
        check_choice(model.get("precond", "eps"), list(PRECONDS), "model.precond")
        smin, smax = model.get("sigma_min", 0.01), model.get("sigma_max", 80.0)
        require(0 < smin < smax, "model.sigma_min", f"need 0 < sigma_min < sigma_max, got {smin} and {smax}")
        check_sampling(model.get("sampler"), "model.sampler")
        check_sampling((cfg.get("callbacks") or {}).get("sample_grid"), "callbacks.sample_grid")

    def compiled_modules(self) -> list[nn.Module]:
        return [self.model]

    def __init__(
        self,
        net: nn.Module,
        loss: Callable,
        sigma_sampler: Callable,
        optimizer: Callable,
        scheduler: Callable | None = None,
        precond: str = "eps",
        sigma_min: float = 0.01,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        image_shape: tuple[int, ...] = (1, 28, 28),
        sampler: dict | None = None,
        channels_last: bool = False,
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__(seed=seed, compile=compile)
        check_choice(precond, list(PRECONDS), "model.precond")
        require(0 < sigma_min < sigma_max, "model.sigma_min", f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.precond, self.sigma_data = precond, float(sigma_data)
        self.model = PRECONDS[precond](net, sigma_data)
        self.loss_fn, self.sigma_sampler = loss, sigma_sampler
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.image_shape = tuple(image_shape)
        self.sampler_defaults = {"solver": "heun", "steps": 20, "grid": "karras", **(sampler or {})}
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """eps_hat(x, sigma) = dx/dsigma of the PF-ODE."""
        return self.model(x, sigma)

    # ----- training ---------------------------------------------------------------------
    def draw_noise(self, x0: torch.Tensor, generator: torch.Generator, batch_idx: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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

    def sigmas(self, steps: int, grid: str) -> torch.Tensor:
        return sigma_grid(grid, steps, self.sigma_min, self.sigma_max)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        solver: str | None = None,
        steps: int | None = None,
        grid: str | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
        **options,
    ) -> torch.Tensor:
        """n images in [-1, 1] on CPU, [n, C, H, W], integrated in chunks of batch_size.
        `options` go to `eps_function` (a mixture system's routing)."""
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
