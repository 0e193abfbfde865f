"""Initialise the MoE from N per-subset SubModel checkpoints.

- extractor <- elementwise mean of the N sub-models' extractor PARAMETERS (conv weights,
  BN gamma/beta); shapes must match (otherwise an ArgumentError naming `init_from`, the MoE
  system's argument; the system reports it under its config key).
- BatchNorm statistics of the averaged extractor are RESET (running mean 0, var 1, counter 0):
  the averaged weights are a new network whose activations none of the sub-models' statistics
  describe; training re-estimates them (momentum 0.1) within the first epoch. The reference
  leaves them at their 0/1 defaults too (it averages parameters, not buffers).
- expert i <- sub-model i's expert block, parameters AND BN statistics (order of init_from).
- gate and classifier keep their fresh init (the seed README's v2 head has no per-expert classifier).
"""

from pathlib import Path

import torch
from torch import nn

from mixlab.core.checkpoint import read_checkpoint
from mixlab.core.errors import ArgumentError

KEY = "init_from"  # the MoE system's argument these checkpoints come from


def average_state_dicts(states: list[dict[str, torch.Tensor]], key: str = KEY) -> dict[str, torch.Tensor]:
    """Elementwise mean of floating tensors with identical names and shapes."""
    if not states:
        raise ArgumentError(key, "no checkpoints to average")
    names = list(states[0])
    for i, state in enumerate(states[1:], start=2):
        if list(state) != names:
            raise ArgumentError(key, f"checkpoint {i} has different parameter names than checkpoint 1")
        for name in names:
            if state[name].shape != states[0][name].shape:
                raise ArgumentError(
                    key,
                    f"shape mismatch for '{name}': checkpoint 1 has {tuple(states[0][name].shape)}, "
                    f"checkpoint {i} has {tuple(state[name].shape)}",
                )
    return {name: torch.stack([s[name].float() for s in states]).mean(dim=0).to(states[0][name].dtype) for name in names}


def load_submodel_state(path: str | Path, prefix: str = "net.") -> dict[str, torch.Tensor]:
    """The SubModel state_dict inside a mixlab (Lightning) checkpoint, or a plain state_dict file."""
    path = Path(path)
    ckpt = read_checkpoint(path, KEY, error=ArgumentError)
    state = ckpt.get("state_dict", ckpt)
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not any(k.startswith("extractor.") for k in sub) or not any(k.startswith("expert.") for k in sub):
        raise ArgumentError(KEY, f"{path} does not hold a SubModel (no {prefix}extractor.* / {prefix}expert.* weights)")
    return sub


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load_checked(module: nn.Module, state: dict, what: str) -> None:
    own = module.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise ArgumentError(KEY, f"{what}: '{name}' missing from the checkpoint")
        if state[name].shape != tensor.shape:
            raise ArgumentError(
                KEY,
                f"{what}: shape mismatch for '{name}': the MoE has {tuple(tensor.shape)}, "
                f"the checkpoint {tuple(state[name].shape)} (same widths in pretrain and moe?)",
            )
    module.load_state_dict({k: state[k] for k in own})


def init_moe_from_submodels(moe: nn.Module, paths: list[str | Path]) -> None:
    """Fill `moe` (MoEClassifier) in place from len(paths) == moe.num_experts sub-model checkpoints."""
    paths = list(paths)
    if len(paths) != moe.num_experts:
        raise ArgumentError(KEY, f"got {len(paths)} checkpoints for {moe.num_experts} experts (one per expert, in order)")
    states = [load_submodel_state(p) for p in paths]
    param_names = {n for n, _ in moe.extractor.named_parameters()}
    extractor_params = [{k: v for k, v in _part(s, "extractor.").items() if k in param_names} for s in states]
    averaged = average_state_dicts(extractor_params)
    fresh = {k: v for k, v in moe.extractor.state_dict().items() if k not in param_names}
    for name, buf in fresh.items():  # reset BN statistics (see module doc)
        if name.endswith("running_mean") or name.endswith("num_batches_tracked"):
            fresh[name] = torch.zeros_like(buf)
        elif name.endswith("running_var"):
            fresh[name] = torch.ones_like(buf)
    _load_checked(moe.extractor, {**averaged, **fresh}, "extractor")
    for i, (state, expert) in enumerate(zip(states, moe.experts)):
        _load_checked(expert, _part(state, "expert."), f"expert {i} from {paths[i]}")
