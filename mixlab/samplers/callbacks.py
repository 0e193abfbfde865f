"""SamplerFigures: after a validation, every `every_n_steps` optimizer steps (and at the last
step), draw the sampler's figure from the validation's samples (no extra sampling), save it as
`<run dir>/figures/step_<7-digit step>.png` and log it (wandb image / TensorBoard figure), rank 0 only."""

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from mixlab.core.validate import PositiveInt, checked
from mixlab.samplers.figures import draw, title_of


class SamplerFigures(L.Callback):
    @checked
    def __init__(self, every_n_steps: PositiveInt = 1000, key: str = "figures/samples"):
        self.every_n_steps, self.key = every_n_steps, key
        self.last_path: Path | None = None
        self._last_step = 0

    def _due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        last = (trainer.max_steps not in (None, -1) and step >= trainer.max_steps) or (
            trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        )
        return step != self._last_step and (last or step // self.every_n_steps > self._last_step // self.every_n_steps)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        latest = getattr(pl_module, "last_eval", None)
        if trainer.sanity_checking or latest is None or not self._due(trainer):
            return
        self._last_step = trainer.global_step
        self._draw(trainer, pl_module, latest)

    @rank_zero_only
    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, latest: dict) -> None:
        path = Path(trainer.default_root_dir) / "figures" / f"step_{trainer.global_step:07d}.png"
        self.last_path = draw(
            pl_module.energy, latest["x"], latest["truth"], path, title_of(latest["metrics"], latest["step"], pl_module.energy)
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=self.key, images=[str(path)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                import matplotlib.image

                logger.experiment.add_image(
                    self.key, matplotlib.image.imread(str(path))[..., :3], trainer.global_step, dataformats="HWC"
                )

    def state_dict(self) -> dict:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_step = int(state_dict.get("last_step", 0))
