"""`make bench-samplers-reference REF=<gfn-diffusion checkout>` (python -m tools.samplers.versus_reference):
seconds per training iteration of mixlab and of the reference code (GFNOrg/gfn-diffusion,
`energy_sampling/`), side by side in one process: after every mixlab iteration (a real Lightning
fit of the experiment) one reference iteration runs, so both see the same machine load. One thread
by default (`--threads`). Reported per row: the mean over the timed iterations (local search runs
once per 100 iterations, so its rows are timed over 200), and the ratio reference / mixlab
(> 1: mixlab faster).

The reference iteration is driven here the way its `train.py` drives it (forward iterations with
its `get_gfn_forward_loss`, backward ones from its `ReplayBuffer` with `get_gfn_backward_loss`,
local search with its `langevin_dynamics` every `ls_cycle` iterations, one Adam step), with the
arguments of the reference README's commands for each row. Nothing of the reference is copied:
its modules are imported from the checkout given by --reference (needs numpy, matplotlib, einops:
`pip install einops`). The reference's own `train.py` is not imported (wandb, plots, evaluation).

    row                    mixlab experiment                                 reference flags
    tb_manywell            sampler_manywell_tb                               --energy many_well --mode_fwd tb
    tb_expl_gmm25          sampler_gmm25_tb_expl                             --energy 25gmm --t_scale 5 --exploratory ... 0.2
    tb_expl_ls_gmm25       sampler_gmm25_tb_expl_ls                          ... --both_ways --local_search ...
    flsubtb_lp_manywell    sampler_gmm25_flsubtb_lp model/energy=manywell    --mode_fwd subtb --partial_energy
                                                                             --conditional_flow_model --langevin
"""

import argparse
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import torch

from tools.bench import save_json

# reference train.py defaults that the rows use (its argparse defaults), then each row's flags
REFERENCE_DEFAULTS = dict(
    lr_policy=1e-3,
    lr_flow=1e-2,
    lr_back=1e-3,
    hidden_dim=64,
    s_emb_dim=64,
    t_emb_dim=64,
    harmonics_dim=64,
    batch_size=300,
    buffer_size=600000,
    T=100,
    subtb_lambda=2,
    t_scale=1.0,
    log_var_range=4.0,
    mode_fwd="tb",
    mode_bwd="tb",
    both_ways=False,
    local_search=False,
    max_iter_ls=200,
    burn_in=100,
    ls_cycle=100,
    ld_step=0.001,
    ld_schedule=False,
    target_acceptance_rate=0.574,
    beta=1.0,
    rank_weight=1e-2,
    prioritized="rank",
    exploratory=False,
    sampling="buffer",
    langevin=False,
    langevin_scaling_per_dimension=False,
    conditional_flow_model=False,
    learn_pb=False,
    pb_scale_range=0.1,
    learned_variance=False,
    partial_energy=False,
    exploration_factor=0.1,
    exploration_wd=False,
    clipping=True,  # every README command: --pis_architectures --zero_init --clipping
    lgv_clip=1e2,
    gfn_clip=1e4,
    zero_init=True,
    pis_architectures=True,
    lgv_layers=3,
    joint_layers=2,
)

# its README's TB + Expl. command, on 25GMM (sigma2 = 5, as the paper's 25GMM runs)
_GMM25_TB_EXPL = dict(
    energy="25gmm", t_scale=5.0, mode_fwd="tb", lr_flow=1e-1, exploratory=True, exploration_wd=True, exploration_factor=0.2
)

ROWS = {
    "tb_manywell": (
        ["experiment=sampler_manywell_tb"],
        dict(energy="many_well", mode_fwd="tb", lr_flow=1e-1),
    ),
    "tb_expl_gmm25": (["experiment=sampler_gmm25_tb_expl"], _GMM25_TB_EXPL),
    "tb_expl_ls_gmm25": (
        ["experiment=sampler_gmm25_tb_expl_ls"],
        # its README's TB + Expl. + LS command, on 25GMM
        {
            **_GMM25_TB_EXPL,
            "exploration_factor": 0.1,
            "both_ways": True,
            "local_search": True,
            "ld_step": 0.1,
            "ld_schedule": True,
        },
    ),
    "flsubtb_lp_manywell": (
        ["experiment=sampler_gmm25_flsubtb_lp", "model/energy=manywell"],
        dict(energy="many_well", mode_fwd="subtb", lr_flow=1e-2, partial_energy=True, conditional_flow_model=True, langevin=True),
    ),
}


class ReferenceRun:
    """The reference code's training loop for one row, one iteration per `step()`."""

    def __init__(self, checkout: Path, flags: dict, seed: int = 0):
        root = (checkout / "energy_sampling" if (checkout / "energy_sampling").is_dir() else checkout).resolve()
        if not (root / "models" / "gfn.py").is_file():
            raise SystemExit(f"--reference: {checkout} is not a gfn-diffusion checkout (no energy_sampling/models/gfn.py)")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        import buffer  # noqa: PLC0415  (the reference's modules, from the checkout)
        import energies
        import langevin
        import models
        import utils

        for module in (buffer, energies, langevin, models, utils):  # a same-named module imported earlier would shadow them
            if root not in Path(module.__file__).resolve().parents:
                raise SystemExit(f"--reference: `{module.__name__}` was imported from {module.__file__}, not from {root}")
        ReplayBuffer = buffer.ReplayBuffer

        self.utils, self.langevin_dynamics = utils, langevin.langevin_dynamics
        a = self.args = Namespace(**{**REFERENCE_DEFAULTS, **flags})
        a.both_ways = a.both_ways or a.local_search  # as its train.py
        torch.manual_seed(seed)
        device = torch.device("cpu")
        self.energy = {"many_well": energies.ManyWell, "25gmm": energies.TwentyFiveGaussianMixture}[a.energy](device=device)
        self.model = models.GFN(
            self.energy.data_ndim,
            a.s_emb_dim,
            a.hidden_dim,
            a.harmonics_dim,
            a.t_emb_dim,
            trajectory_length=a.T,
            clipping=a.clipping,
            lgv_clip=a.lgv_clip,
            gfn_clip=a.gfn_clip,
            langevin=a.langevin,
            learned_variance=a.learned_variance,
            partial_energy=a.partial_energy,
            log_var_range=a.log_var_range,
            pb_scale_range=a.pb_scale_range,
            t_scale=a.t_scale,
            langevin_scaling_per_dimension=a.langevin_scaling_per_dimension,
            conditional_flow_model=a.conditional_flow_model,
            learn_pb=a.learn_pb,
            pis_architectures=a.pis_architectures,
            lgv_layers=a.lgv_layers,
            joint_layers=a.joint_layers,
            zero_init=a.zero_init,
            device=device,
        )
        self.optimizer = utils.get_gfn_optimizer(
            self.model, a.lr_policy, a.lr_flow, a.lr_back, a.learn_pb, a.conditional_flow_model, False, 0.0
        )
        self.coeff = utils.cal_subtb_coef_matrix(a.subtb_lambda, a.T)
        make = lambda: ReplayBuffer(  # noqa: E731
            a.buffer_size,
            device,
            self.energy.log_reward,
            a.batch_size,
            data_ndim=self.energy.data_ndim,
            beta=a.beta,
            rank_weight=a.rank_weight,
            prioritized=a.prioritized,
        )
        self.buffer, self.buffer_ls = make(), make()
        self.it = 0

    def step(self) -> None:
        a, it, u = self.args, self.it, self.utils
        self.model.zero_grad()
        expl = u.get_exploration_std(it, a.exploratory, a.exploration_factor, a.exploration_wd)
        if a.both_ways and it % 2 == 1:
            if a.local_search:
                if it % a.ls_cycle < 2:
                    x, _ = self.buffer.sample()
                    new, log_r = self.langevin_dynamics(x, self.energy.log_reward, torch.device("cpu"), a)
                    self.buffer_ls.add(new, log_r)
                x, _ = self.buffer_ls.sample()
            else:
                x, _ = self.buffer.sample()
            loss = u.get_gfn_backward_loss(a.mode_bwd, x, self.model, self.energy.log_reward, exploration_std=expl)
        else:
            init = torch.zeros(a.batch_size, self.energy.data_ndim)
            out = u.get_gfn_forward_loss(
                a.mode_fwd, init, self.model, self.energy.log_reward, self.coeff, exploration_std=expl, return_exp=a.both_ways
            )
            if a.both_ways:
                loss, states, _, _, log_r = out
                self.buffer.add(states[:, -1], log_r)
            else:
                loss = out
        loss.backward()
        self.optimizer.step()
        self.it += 1

    @torch.no_grad()
    def trajectories(self, n: int, seed: int, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n trajectories of the current model from x_0 = 0 without exploration, through its own
        `get_trajectory_fwd` as its evaluation runs it (model.eval()), `chunk` rows per call (all
        at once: None), its noise (the global RNG) seeded once with `seed` and the training's RNG
        state restored afterwards: (x_1 [n,d], log p_F [n,T], log p_B [n,T]), log-densities of
        each transition (log p_B of the first, a point mass at 0, is 0)."""
        parts = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model.eval()
            try:
                for start in range(0, n, chunk or n):
                    init = torch.zeros(min(chunk or n, n - start), self.energy.data_ndim)
                    states, log_pf, log_pb, _ = self.model.get_trajectory_fwd(init, None, self.energy.log_reward)
                    parts.append((states[:, -1], log_pf, log_pb))
            finally:
                self.model.train()
        x, log_pf, log_pb = (torch.cat(p) for p in zip(*parts))
        return x, log_pf, log_pb

    def log_z_learned(self) -> float | None:
        """The learned log Z of TB (its scalar `flow_model`); None for a conditional flow."""
        flow = self.model.flow_model
        return float(flow.detach()) if isinstance(flow, torch.nn.Parameter) else None


def bare_fit(cfg, callbacks: list, seed: int = 0):
    """A Lightning fit of the composed run config with only `callbacks` (no logger, checkpoints,
    progress bar or summary): the iterations a user's run does, nothing around them."""
    import lightning as L

    from mixlab.core.config import build
    from mixlab.core.pipeline import check_run_config
    from mixlab.core.quiet import quiet_lightning

    quiet_lightning()
    check_run_config(cfg)
    L.seed_everything(seed, verbose=False)
    system = build(cfg.model)
    trainer = build(
        cfg.trainer,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(system)
    return system


def interleaved(row: str, checkout: Path, iterations: int, warmup: int, work: Path) -> dict:
    """One mixlab fit of `iterations` iterations; after each, one reference iteration. Means over
    the iterations after `warmup`."""
    from lightning.pytorch.callbacks import Callback

    from tools.gpu_check import compose

    overrides, flags = ROWS[row]
    reference = ReferenceRun(checkout, flags)
    ours, theirs = [], []

    class SideBySide(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            ours.append(time.perf_counter() - self.start)
            start = time.perf_counter()
            reference.step()
            theirs.append(time.perf_counter() - start)

    cfg = compose(
        [
            *overrides,
            "trainer=default",
            "trainer.max_epochs=-1",
            f"++trainer.max_steps={iterations}",
            "++trainer.limit_val_batches=0",
            "model.eval_every=100",
        ],
        work / row,
    )
    bare_fit(cfg, [SideBySide()], seed=0)
    mine, ref = ours[warmup:], theirs[warmup:]
    out = {
        "row": row,
        "iterations": len(mine),
        "mixlab_sec_per_it": statistics.fmean(mine),
        "reference_sec_per_it": statistics.fmean(ref),
        "mixlab_median": statistics.median(mine),
        "reference_median": statistics.median(ref),
    }
    out["speedup"] = out["reference_sec_per_it"] / out["mixlab_sec_per_it"]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m tools.samplers.versus_reference", description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, type=Path, help="a GFNOrg/gfn-diffusion checkout (or its energy_sampling/)")
    p.add_argument("--rows", nargs="*", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--iterations", type=int, default=60, help="timed iterations per row (LS rows: at least 200)")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"seconds per training iteration, mixlab vs reference interleaved, {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as work:
        for row in args.rows:
            n = args.warmup + (max(args.iterations, 200) if row == "tb_expl_ls_gmm25" else args.iterations)
            r = interleaved(row, args.reference, n, args.warmup, Path(work))
            rows.append(r)
            print(
                f"  {row:<22} mixlab {r['mixlab_sec_per_it'] * 1e3:8.1f} ms   reference {r['reference_sec_per_it'] * 1e3:8.1f} ms"
                f"   {r['speedup']:5.2f}x   ({r['iterations']} iterations)",
                flush=True,
            )
    save_json(args.json, {"threads": args.threads, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
