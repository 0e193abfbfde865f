"""The progress bar: Lightning's RichProgressBar, with an epoch label that also reads well for
runs counted in optimizer steps (`trainer.max_epochs=-1 trainer.max_steps=N`), where Lightning
would print "Epoch 0/-2"."""

from lightning.pytorch.callbacks import RichProgressBar


def epoch_label(epoch: int, max_epochs: int | None, max_steps: int | None) -> str:
    """'Epoch 3/9' for epoch-counted runs, 'Epoch 3 (of 20000 steps)' for step-counted ones."""
    label = f"Epoch {epoch}"
    if max_epochs is not None and max_epochs >= 0:
        label += f"/{max_epochs - 1}"
    elif max_steps is not None and max_steps > 0:
        label += f" (of {max_steps} steps)"
    return label


class ProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        label = epoch_label(current_epoch, self.trainer.max_epochs, self.trainer.max_steps)
        return f"{label:{len(self.validation_description)}}"  # padded as Lightning does (no flicker)
