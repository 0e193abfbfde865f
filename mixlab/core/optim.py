"""Learning-rate schedules any system can name in its `scheduler` config (method-free)."""

import torch

from mixlab.core.validate import NonNegativeInt, checked


class WarmupFactor:
    """lr multiplier min(step / warmup_steps, 1): linear warmup over `warmup_steps` optimizer
    steps, then constant (a picklable LambdaLR function, for ddp_spawn and checkpoints)."""

    @checked
    def __init__(self, warmup_steps: NonNegativeInt):
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup_steps <= 0 else min(step / self.warmup_steps, 1.0)


@checked
def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: NonNegativeInt) -> torch.optim.lr_scheduler.LambdaLR:
    """`scheduler: {_target_: mixlab.core.optim.linear_warmup, _partial_: true, warmup_steps: 2500}`;
    the system steps it every optimizer step (interval: step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupFactor(warmup_steps))
