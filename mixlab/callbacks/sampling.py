"""Periodic sample grids during training (EMA weights: runs inside validation)."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write images in [-1, 1] ([N, C, H, W]) as one PNG grid; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(len(images) ** 0.5))
    save_image((images[:, :3] + 1) / 2, path, nrow=nrow, padding=2, pad_value=1.0)
    return path


class SampleGrid(L.Callback):
    """Every `every_n_epochs` validations, sample a fixed-noise grid, save it under
    `<run dir>/samples/epoch_<epoch>[_<set>].png` and log it to wandb / TensorBoard (rank 0 only).

    Calls `pl_module.sample(num_samples, generator=, **options, **set_options)` for every
    named set of `pl_module.sample_sets()` (e.g. MCL: the default routing and each expert);
    `options` are the system's sampling options (score diffusion: solver, steps, grid), checked
    by the system's `check_config`. The EMA callback must come after this one in the callback
    list (the pipeline orders it so): callbacks' validation-end hooks run in list order and EMA
    swaps the raw weights back in its own.
    """

    def __init__(self, every_n_epochs: int = 5, num_samples: int = 64, seed: int = 0, **options):
        self.every_n_epochs, self.num_samples, self.seed, self.options = every_n_epochs, num_samples, seed, options
        self.last_path: Path | None = None  # the first grid of the latest sampled epoch

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        return self.every_n_epochs > 0 and (epoch % self.every_n_epochs == 0 or last)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer):
            return
        self._sample_and_log(trainer, pl_module)

    @rank_zero_only
    def _sample_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = Path(trainer.default_root_dir) / "samples"
        for i, (name, set_options) in enumerate(pl_module.sample_sets().items()):
            gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            images = pl_module.sample(self.num_samples, generator=gen, **self.options, **set_options)
            path = save_grid(images, out_dir / f"epoch_{trainer.current_epoch:04d}{'_' + name if name else ''}.png")
            if i == 0:
                self.last_path = path
            self._log(trainer, images, f"samples/{name}" if name else "samples")

    def _log(self, trainer: L.Trainer, images: torch.Tensor, key: str) -> None:
        grid = make_grid((images + 1) / 2, nrow=max(1, int(len(images) ** 0.5)))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[grid], step=trainer.global_step, caption=[f"epoch {trainer.current_epoch}"])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, grid, trainer.global_step)
