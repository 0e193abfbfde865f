"""BatchNorm over the global batch under DDP, on any device (torch's SyncBatchNorm is GPU-only).

In training mode with an initialised process group of more than one rank, the batch statistics
are the mean and (biased) variance of the whole global batch: each rank all-reduces its
per-channel sum, sum of squares and count (`torch.distributed.nn.functional.all_reduce`, which
carries gradients back to every rank). N processes x B/N samples then normalise, and update the
running statistics, exactly as 1 process x B does, up to float rounding. Otherwise it is
`torch.nn.BatchNorm{1,2,3}d`.
"""

import warnings

import torch
import torch.distributed as dist
from torch import nn


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Drop-in for BatchNorm1d/2d/3d (same parameters, buffers and state dict keys)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # autograd-aware; its replacement is private API

        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        local = torch.cat([x.sum(dims), (x * x).sum(dims), count])  # [2C + 1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            total = all_reduce(local)
        c, n = x.shape[1], total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).detach(), momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def global_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every plain torch BatchNorm{1,2,3}d layer replaced (in place where nested) by GlobalBatchNorm,
    weights and running statistics kept; returns the module (a new one if `module` itself was a BatchNorm)."""
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(module.running_mean.device if module.running_mean is not None else module.weight.device)
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child))
    return module
