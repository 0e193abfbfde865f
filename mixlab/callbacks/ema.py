"""Exponential moving average of the weights, on top of Lightning's WeightAveraging.

Lightning's own EMAWeightAveraging builds its averaging function as a closure, which cannot
be pickled for `ddp_spawn`; `EMAUpdate` is the same rule as a picklable object. WeightAveraging
swaps the EMA weights in for validation (so val/loss, sample grids and the `best` checkpoint
use them) and saves them as the checkpoint's `state_dict` (the raw weights go to
`current_model_state`), so evaluation loads EMA weights by default.
"""

from typing import Annotated

import torch
from lightning.pytorch.callbacks import WeightAveraging
from pydantic import Field

from mixlab.core.validate import checked

Decay = Annotated[float, Field(gt=0, lt=1)]


class EMAUpdate:
    """avg <- d * avg + (1 - d) * current (the first update copies `current`).

    d = decay, or with `warmup` d_n = min(decay, (1 + n) / (10 + n)) after n updates, so that a
    short run's average is not dominated by its first weights (0.999^1000 = 0.37).
    """

    @checked
    def __init__(self, decay: Decay, warmup: bool = False):
        self.decay, self.warmup = decay, warmup

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        decay = self.decay
        if self.warmup:
            n = float(num_averaged)
            decay = min(decay, (1.0 + n) / (10.0 + n))
        return decay * averaged + (1.0 - decay) * current


class EMA(WeightAveraging):
    """EMA with decay `decay` (optionally warmed up), updated after every optimizer step, kept on
    the training device. The seed uses a constant 0.999 from the start (warmup=False)."""

    @checked
    def __init__(self, decay: Decay = 0.999, warmup: bool = False, use_buffers: bool = True):
        super().__init__(use_buffers=use_buffers, avg_fn=EMAUpdate(decay, warmup))
        self.decay = decay

    def setup(self, trainer, pl_module, stage: str) -> None:
        # setup() runs before the strategy moves the module: keep the average on the root device
        # so each update is a device-local op rather than a host copy of every parameter.
        self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)
