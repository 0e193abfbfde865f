"""GlobalBatchNorm: N processes x B/N samples normalise and track statistics as 1 process x B does."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mixlab.nets.global_batchnorm import GlobalBatchNorm, global_batchnorm


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2), nn.BatchNorm1d(2)
    )


def test_conversion_keeps_weights_and_is_plain_batchnorm_without_ddp():
    plain, converted = net(), global_batchnorm(net())
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[5], GlobalBatchNorm)
    assert plain.state_dict().keys() == converted.state_dict().keys()
    x = torch.randn(8, 2, 8, 8)
    torch.testing.assert_close(converted(x), plain(x))
    torch.testing.assert_close(converted[1].running_var, plain[1].running_var)


def _rank(rank: int, port: int, x: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = global_batchnorm(net()).double()
    part = x.chunk(2)[rank].clone().requires_grad_(True)
    model(part).square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    for g in grads:
        dist.all_reduce(g)  # what DDP does (sum: the loss is a sum over samples)
    if rank == 0:
        out.update(state={k: v.clone() for k, v in model.state_dict().items()}, grads=[g.clone() for g in grads])
    out[f"input_grad_{rank}"] = part.grad.clone()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process():
    x = torch.randn(8, 2, 8, 8, dtype=torch.float64)  # float64: equal up to rounding, which is then ~1e-12
    single = net().double()
    whole = x.clone().requires_grad_(True)
    single(whole).square().sum().backward()
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(29000 + os.getpid() % 1000, x, out), nprocs=2)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(out["state"][key], value, rtol=1e-10, atol=1e-10)
    for got, p in zip(out["grads"], single.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cat([out["input_grad_0"], out["input_grad_1"]]), whole.grad, rtol=1e-9, atol=1e-9)
