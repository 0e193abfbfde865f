"""MetricHistory: per-epoch values of logged metrics kept in the checkpoint, so figures such as
training curves can be drawn from a checkpoint alone, whichever logger (or none) the run used."""

from collections.abc import Sequence

import lightning as L

from mixlab.core.validate import checked


class MetricHistory(L.Callback):
    """At the end of every training epoch (after its validation) record the epoch-level values of
    every logged metric whose name starts with one of `prefixes`. The pipeline puts it after the
    other callbacks, so metrics they log at epoch end (expert usage) are in the same row, and
    before the checkpoint is written (ModelCheckpoint runs after the other callbacks)."""

    @checked
    def __init__(self, prefixes: Sequence[str] = ("train/", "val/", "usage/", "temperature")):
        self.prefixes = tuple(prefixes)
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for name, value in trainer.callback_metrics.items():
            if name.startswith(self.prefixes) and not name.endswith("_step") and value.numel() == 1:
                row[name.removesuffix("_epoch")] = float(value)
        self.history.append(row)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
