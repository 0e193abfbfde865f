"""Distributed helpers that know no method: how many processes a trainer config asks for, how
a global batch splits over them, and a process's rank on its node before the trainer exists."""

import atexit
import os

import lightning as L
import torch
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig

from mixlab.core.errors import ConfigError
from mixlab.core.validate import PositiveInt, check_value


def world_size(trainer: DictConfig) -> int:
    """Number of processes the trainer config asks for (devices x num_nodes)."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    nodes = 1 if nodes is None else nodes
    accelerator = str(trainer.get("accelerator", "auto"))
    if isinstance(devices, (list, ListConfig)):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif str(devices) in ("auto", "-1"):
        gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    else:
        try:
            count = int(devices)
        except ValueError:
            raise ConfigError("trainer.devices", f"cannot read '{devices}' as a device count") from None
        if count <= 0:
            raise ConfigError("trainer.devices", f"must be >= 1 (or auto / -1), got {devices}")
    return count * check_value(nodes, PositiveInt, "trainer.num_nodes")


def per_device_batch_size(global_batch_size: int, world_size: int, key: str = "data.batch_size", accumulate: int = 1) -> int:
    """The micro-batch of one process: the global batch (what one optimizer step sees) split over
    `world_size` processes and `accumulate` gradient-accumulation steps; it must divide evenly.
    `key` names where the batch size is configured (data.batch_size, or model.batch_size for a
    system that draws its own batches)."""
    check_value(global_batch_size, PositiveInt, key)
    if global_batch_size % (world_size * accumulate):
        split = f"{world_size} devices (trainer.devices x trainer.num_nodes)"
        if accumulate > 1:
            split += f" x {accumulate} accumulation steps (trainer.accumulate_grad_batches)"
        raise ConfigError(key, f"global batch size {global_batch_size} is not divisible by {split}")
    return global_batch_size // (world_size * accumulate)


def accumulation(trainer: DictConfig) -> int:
    """trainer.accumulate_grad_batches as a positive integer (1 when unset)."""
    return check_value(trainer.get("accumulate_grad_batches") or 1, PositiveInt, "trainer.accumulate_grad_batches")


def local_rank() -> int:
    """This process's rank on its node, readable before the Trainer exists: LOCAL_RANK (set for
    the processes Lightning's own launcher or torchrun start), SLURM_LOCALID (srun's tasks, which
    Lightning does not start and leaves without LOCAL_RANK), else 0."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DestroyProcessGroupAtExit(L.Callback):
    """Destroys the process group when the process exits. A gloo (CPU) group left alive at
    interpreter exit can abort a process whose training finished ("terminate called without an
    active exception", SIGABRT, about every other exit of two spawned processes under load);
    Lightning registers this for NCCL only. Registered after the group exists; a second
    registration (another fit in the process) finds the group already gone and does nothing."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if dist.is_available() and dist.is_initialized():
            atexit.register(_destroy_process_group)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """x [B, ...] -> its mean over dim 0 across every rank's rows, with gradients to every rank
    (each rank computing a loss of it and DDP averaging gradients gives 1 process x the global
    batch). Without an initialised process group: x.mean(0)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x.mean(dim=0)
    import warnings

    from torch.distributed.nn.functional import all_reduce  # autograd-aware; its replacement is private API

    local = torch.cat([x.sum(dim=0).flatten(), x.new_tensor([x.shape[0]])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        total = all_reduce(local)
    return (total[:-1] / total[-1]).reshape(x.shape[1:])
