"""One temperature schedule for every mixture model: the MCL assignment temperature (annealed
WTA) and the MoE gate temperature are both driven by `TemperatureAnnealing`.

The callback writes `pl_module.temperature` before every epoch (interval=epoch) or every
optimizer step (interval=step). A tensor attribute (e.g. a registered buffer, so the value is
saved in the checkpoint's state_dict) is filled in place; anything else is replaced by a float.
The value is a pure function of (epoch or step), both restored by Lightning on resume, so a
resumed run continues the schedule exactly.
"""

import math
from typing import Literal

import lightning as L
import torch

from mixlab.core.errors import ArgumentError
from mixlab.core.validate import PositiveInt, checked

SCHEDULES = ("linear", "exponential", "cosine")


def annealed_value(start: float, end: float, progress: float, schedule: str = "exponential") -> float:
    """Value at `progress` in [0, 1] (clipped): start at 0, end at 1.

    linear: start + (end - start) p; exponential (geometric): start (end / start)^p, the
    reference's tau_max (tau_min / tau_max)^((e-1)/(E-1)); cosine: end + (start - end)(1 + cos(pi p)) / 2.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "linear":
        return start + (end - start) * p
    if schedule == "exponential":
        return start * (end / start) ** p
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule '{schedule}' (choose {'|'.join(SCHEDULES)})")


def progress_of(index: int, total: int) -> float:
    """index / (total - 1): the first of `total` epochs/steps is 0, the last is exactly 1."""
    return 1.0 if total <= 1 else index / (total - 1)


class TemperatureAnnealing(L.Callback):
    """Anneal `pl_module.temperature` from `start` to `end` over the run.

    Args:
        start, end: endpoint values (both > 0 for `exponential`).
        schedule: linear | exponential | cosine.
        interval: `epoch` (constant within an epoch, reaches `end` in the last epoch; the MCL
            reference) or `step` (updated before every optimizer step).
        total: epochs (or steps) the schedule spans; default trainer.max_epochs (or the
            trainer's estimated number of optimizer steps). Past `total` the value stays `end`.
    """

    @checked
    def __init__(
        self,
        start: float,
        end: float,
        schedule: Literal["linear", "exponential", "cosine"] = "exponential",
        interval: Literal["epoch", "step"] = "epoch",
        total: PositiveInt | None = None,
    ):
        if schedule == "exponential" and not (start > 0 and end > 0):
            raise ArgumentError("start", f"the exponential schedule needs start > 0 and end > 0, got {start} and {end}")
        self.start, self.end, self.schedule, self.interval, self.total = float(start), float(end), schedule, interval, total
        self.value = float(start)

    def _total(self, trainer: L.Trainer) -> int:
        if self.total is not None:
            return int(self.total)
        if self.interval == "epoch":
            return int(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else 1
        return int(trainer.estimated_stepping_batches)

    def value_at(self, index: int, total: int) -> float:
        return annealed_value(self.start, self.end, progress_of(index, total), self.schedule)

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, index: int) -> None:
        self.value = self.value_at(index, self._total(trainer))
        current = getattr(pl_module, "temperature", None)
        if isinstance(current, torch.Tensor):
            current.fill_(self.value)
        else:
            pl_module.temperature = self.value

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval == "epoch":
            self._apply(trainer, pl_module, trainer.current_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.interval == "step":
            self._apply(trainer, pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        pl_module.log("temperature", self.value, on_step=True, on_epoch=False, prog_bar=True)

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict) -> None:
        self.value = float(state_dict.get("value", self.start))
