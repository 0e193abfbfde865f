"""MCL training-step benchmark: `make bench-mcl` / `python -m mixlab.mcl.bench [--experts 4 --batch 128]`.

Times one full MCL optimizer step (the K experts' loss matrix, annealed-WTA weights, per-expert
losses, backward, per-expert clipping, Adam) of the seed's ScoreNet experts, with the experts
run as one vmap over stacked parameters vs a Python loop over parameter slices, in one process.
Reports images/s and the ratio to the loop (the reference), plus one plain baseline step
(K = 1) for the cost of K experts.
"""

import argparse

import torch

from mixlab.core.bench import device_name, measure, median_step_seconds
from mixlab.score.losses import EpsilonLoss
from mixlab.score.schedule import LogUniformSigma
from mixlab.mcl.assignment import AnnealedWTA, weighted_expert_losses
from mixlab.nets.scorenet import ScoreNet
from mixlab.nets.stacked import clip_grad_norm_per_expert
from mixlab.mcl.system import MCLDiffusion


def mcl_step_seconds(device: torch.device, experts: int, batch: int, vectorize: bool, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    system = MCLDiffusion(net=ScoreNet(), assignment=AnnealedWTA(), num_experts=experts, vectorize=vectorize,
                          loss=EpsilonLoss(), sigma_sampler=LogUniformSigma(), optimizer=None).to(device)
    params = list(system.experts.parameters())
    opt = torch.optim.Adam(params, lr=3e-4)
    x0 = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1
    sampler = LogUniformSigma()

    def step():
        m = system.loss_matrix(x0, sampler(batch, device=device), torch.randn_like(x0))  # [B, K]
        weights, _ = AnnealedWTA()(m.detach() * 784, temperature=1.0)
        loss = weighted_expert_losses(m, weights).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_per_expert(system.experts.per_expert_parameters(), 1.0)
        opt.step()

    return median_step_seconds(step, device, steps, warmup)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device} ({device_name(device)}), K={args.experts} seed ScoreNets, batch {args.batch}, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    plan = (("loop over experts (reference)", args.experts, False), ("vmap over stacked experts", args.experts, True), ("one expert (K=1)", 1, False))
    timers = [(name, {"experts": k}, lambda k=k, v=v: mcl_step_seconds(device, k, args.batch, v, args.steps, args.warmup)) for name, k, v in plan]
    return measure(timers, args.batch, device, "speedup_vs_loop", args.json)

if __name__ == "__main__":
    main()
