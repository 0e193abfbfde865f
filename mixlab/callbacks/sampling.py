"""Periodic samples during training, images or text (EMA weights: runs inside validation)."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from mixlab.core.validate import NonNegativeInt, PositiveInt, checked


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write images in [-1, 1] ([N, C, H, W]) as one PNG grid; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(len(images) ** 0.5))
    save_image((images[:, :3] + 1) / 2, path, nrow=nrow, padding=2, pad_value=1.0)
    return path


SEPARATOR = "\n" + "=" * 80 + "\n"


def save_texts(texts: list[str], path: str | Path) -> Path:
    """Write text samples to one file, separated by a line of '=' (the reference's layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SEPARATOR.join(texts) + "\n")
    return path


class SampleGrid(L.Callback):
    """Every `every_n_epochs` epochs or every `every_n_steps` optimizer steps (checked when a
    validation ends, so with step-based validation set it to a multiple of val_check_interval),
    draw samples with a fixed seed, save them under `<run dir>/samples/` and log them (rank 0).

    Calls `pl_module.sample(num_samples, generator=, **options, **set_options)` for every
    named set of `pl_module.sample_sets()` (e.g. MCL: the default routing and each expert);
    `options` are the system's sampling options (score diffusion: solver, steps, grid), checked
    by the system's `check_config`. An image tensor [N, C, H, W] in [-1, 1] is written as a PNG
    grid (`epoch_0004.png` / `step_0001000.png`) and logged as an image; a list of strings as a
    text file (`..._<set>.txt`) and a wandb table. The EMA callback must come after this one in
    the callback list (the pipeline orders it so): callbacks' validation-end hooks run in list
    order and EMA swaps the raw weights back in its own.
    """

    @checked
    def __init__(
        self,
        every_n_epochs: NonNegativeInt = 5,
        num_samples: PositiveInt = 64,
        seed: int = 0,
        every_n_steps: PositiveInt | None = None,
        **options,
    ):
        self.every_n_epochs, self.every_n_steps, self.num_samples, self.seed = every_n_epochs, every_n_steps, num_samples, seed
        self.options = options
        self.last_path: Path | None = None  # the first file of the latest sampling
        self._last_step, self._last_epoch = 0, -1  # when the latest samples were drawn

    def _due(self, trainer: L.Trainer) -> bool:
        if self.every_n_steps:
            step = trainer.global_step
            last = trainer.max_steps not in (None, -1) and step >= trainer.max_steps
            return step != self._last_step and (last or step // self.every_n_steps > self._last_step // self.every_n_steps)
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        done = self._last_epoch == trainer.current_epoch and not last  # once per epoch (and at the very end)
        return self.every_n_epochs > 0 and not done and (epoch % self.every_n_epochs == 0 or last)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer):
            return
        self._last_step, self._last_epoch = trainer.global_step, trainer.current_epoch
        self._sample_and_log(trainer, pl_module)

    @rank_zero_only
    def _sample_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = Path(trainer.default_root_dir) / "samples"
        stem = f"step_{trainer.global_step:07d}" if self.every_n_steps else f"epoch_{trainer.current_epoch:04d}"
        for i, (name, set_options) in enumerate(pl_module.sample_sets().items()):
            gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            samples = pl_module.sample(self.num_samples, generator=gen, **self.options, **set_options)
            key, suffix = (f"samples/{name}", f"_{name}") if name else ("samples", "")
            if isinstance(samples, torch.Tensor):
                path = save_grid(samples, out_dir / f"{stem}{suffix}.png")
                self._log_images(trainer, samples, key)
            else:
                path = save_texts(list(samples), out_dir / f"{stem}{suffix}.txt")
                self._log_texts(trainer, list(samples), key)
            if i == 0:
                self.last_path = path

    def _log_images(self, trainer: L.Trainer, images: torch.Tensor, key: str) -> None:
        grid = make_grid((images + 1) / 2, nrow=max(1, int(len(images) ** 0.5)))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[grid], step=trainer.global_step, caption=[f"epoch {trainer.current_epoch}"])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, grid, trainer.global_step)

    def _log_texts(self, trainer: L.Trainer, texts: list[str], key: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(
                    key=key, columns=["step", "sample"], data=[[trainer.global_step, t] for t in texts], step=trainer.global_step
                )
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(key, SEPARATOR.join(texts), trainer.global_step)

    def state_dict(self) -> dict:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_step = int(state_dict.get("last_step", 0))
