"""Exponential moving average of the weights, on top of Lightning's WeightAveraging.

Lightning's own EMAWeightAveraging builds its averaging function as a closure, which cannot
be pickled for `ddp_spawn`; `EMAUpdate` is the same rule as a picklable object. WeightAveraging
swaps the EMA weights in for validation (so val/loss, sample grids and the `best` checkpoint
use them) and saves them as the checkpoint's `state_dict` (the raw weights go to
`current_model_state`), so evaluation loads EMA weights by default.
"""

import torch
from lightning.pytorch.callbacks import WeightAveraging


class EMAUpdate:
    """avg <- decay * avg + (1 - decay) * current (the first update copies `current`)."""

    def __init__(self, decay: float):
        self.decay = float(decay)

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        return self.decay * averaged + (1.0 - self.decay) * current


class EMA(WeightAveraging):
    """EMA with decay `decay`, updated after every optimizer step, kept on the training device."""

    def __init__(self, decay: float = 0.999, use_buffers: bool = True):
        if not 0.0 < decay < 1.0:
            from mixlab.errors import ConfigError

            raise ConfigError("callbacks.ema.decay", f"must be in (0, 1), got {decay}")
        super().__init__(use_buffers=use_buffers, avg_fn=EMAUpdate(decay))
        self.decay = decay

    def setup(self, trainer, pl_module, stage: str) -> None:
        # setup() runs before the strategy moves the module: keep the average on the root device
        # so each update is a device-local op rather than a host copy of every parameter.
        self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)
