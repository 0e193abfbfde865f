"""K copies of one network evaluated as a single vectorised forward (torch.func.vmap).

The K experts' parameters are stacked along a leading expert dimension ([K, ...] per tensor)
and registered as ordinary nn.Parameters, so one optimizer, the EMA callback and the
checkpoint see them like any other weights. Adam's update is elementwise, so one Adam over the
stacked tensors is exactly K independent Adams. Gradient clipping must be per expert:
`clip_grad_norm_per_expert`.
"""

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from mixlab.core.validate import PositiveInt, checked


def reinitialise(net: nn.Module) -> nn.Module:
    """Fresh default PyTorch init of every submodule that has `reset_parameters` (in place)."""
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return net


class StackedExperts(nn.Module):
    """K independently initialised copies of `net`, evaluated together.

    forward(*args) -> [K, *out]: every expert on the same inputs, either as one vmap over the
        stacked parameters (`vectorize=True`) or as K plain forwards on parameter slices (False).
        Both give the same numbers (tested); which is faster depends on the device: on a CPU
        the vmap's grouped convolutions and layout copies cost ~4x the loop (docs/results.md).
    expert(k, *args) -> out: expert k alone (a plain forward with its slice of the parameters).
    Dropout masks differ between experts.
    """

    @checked
    def __init__(self, net: nn.Module, num_experts: PositiveInt, vectorize: bool = True):
        super().__init__()
        self.vectorize = bool(vectorize)
        self.num_experts = int(num_experts)
        copies = [net] + [reinitialise(copy.deepcopy(net)) for _ in range(num_experts - 1)]
        params, buffers = stack_module_state(copies)
        self._names = {name: name.replace(".", "__") for name in [*params, *buffers]}
        self.stacked = nn.ParameterDict({self._names[n]: nn.Parameter(p.detach().clone()) for n, p in params.items()})
        for name, b in buffers.items():
            self.register_buffer("buf__" + self._names[name], b.clone())
        self._buffer_names = list(buffers)
        # The architecture to call with stacked weights; a list so it is not a registered submodule.
        # A CPU copy, not a meta one: meta tensors cannot be shared with ddp_spawn workers.
        self._template = [copy.deepcopy(net)]

    def _state(self) -> dict[str, torch.Tensor]:
        state = {name: self.stacked[key] for name, key in self._names.items() if key in self.stacked}
        state.update({name: getattr(self, "buf__" + self._names[name]) for name in self._buffer_names})
        return state

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if not self.vectorize:
            return torch.stack([self.expert(k, *args) for k in range(self.num_experts)])
        template = self._template[0].train(self.training)

        def one(state, *inputs):
            return functional_call(template, state, inputs)

        return vmap(one, in_dims=(0, *([None] * len(args))), randomness="different")(self._state(), *args)

    def expert(self, k: int, *args: torch.Tensor) -> torch.Tensor:
        state = {name: t[k] for name, t in self._state().items()}
        return functional_call(self._template[0].train(self.training), state, args)

    def per_expert_parameters(self) -> list[torch.Tensor]:
        return list(self.stacked.values())


@torch.no_grad()
def clip_grad_norm_per_expert(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip each expert's gradient (slice k of every stacked tensor) to global norm `max_norm`,
    as K separate `clip_grad_norm_` calls would. Returns the K pre-clip norms."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # [K]
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.reshape(-1, *([1] * (g.dim() - 1))))
    return norms
