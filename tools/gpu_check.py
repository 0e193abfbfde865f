"""`make gpu-check`: every GPU row in one command, one JSON (`--json`, default gpu_check.json)
plus a printed table. Sized to finish in under 8 minutes on one H100.

Sections (every row records its peak memory: GPU memory on CUDA, the process's RSS on a CPU):
  bench    the method benchmarks as `make bench*` runs them: the baseline step (fp32 reference,
           channels_last, bf16, torch.compile); MCL K=4 (dense loop vs vmap, sparse hard WTA);
           the SEDD DiT training step (tokens/s and MFU: fp32 SDPA reference, bf16, flash-attn
           when installed, compile) and SEDD sampling at the GPT-2 vocabulary (V 50,257 + MASK);
           the samplers' seconds per iteration.
  systems  real training steps through Lightning at `trainer=gpu` (bf16-mixed) for baseline,
           mcl_k4, moe_task_a (no sub-model init), sedd_absorb and sampler_manywell_tb: median
           seconds per optimizer step and items/s (images, tokens or trajectories).
  cli      `python train.py` as a user runs it: with `trainer=gpu`, with `trainer=ddp
           trainer.devices=1` (NCCL), and an exact resume (1 epoch, killed, resumed to 2)
           compared with 2 uninterrupted epochs (max |weight difference|).

`--tiny` runs the same code on the CPU in about two minutes (debug=smoke, tiny sizes,
`trainer=default` / `ddp_cpu`); `make test` runs it. Data: the data sets of the experiments
under `--data-dir` (`make data data-fashion data-text`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from tools.bench import device_name, peak_memory_mb

ROOT = Path(__file__).resolve().parents[1]

# experiment -> (overrides on a GPU, what one step processes: (label, config keys multiplied))
SYSTEMS = {
    "baseline": ([], ("images", ("data.batch_size",))),
    "mcl_k4": ([], ("images", ("data.batch_size",))),
    "moe_task_a": (["data/source=standin", "model.init_from=null"], ("images", ("data.batch_size",))),
    "sedd_absorb": (["data.batch_size=32"], ("tokens", ("data.batch_size", "data.length"))),
    "sampler_manywell_tb": ([], ("trajectories", ("model.batch_size",))),
}


class StepTimer(L.Callback):
    """Wall time of every training batch (forward, backward, optimizer step), CUDA-synchronised."""

    def __init__(self):
        self.seconds: list[float] = []

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        self.seconds.append(time.perf_counter() - self._start)


def compose(overrides: list[str], out_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train.yaml", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir = str(out_dir), str(out_dir / "logs")
        del cfg.hydra
    GlobalHydra.instance().clear()
    return cfg


def system_row(experiment: str, args, device: torch.device, work: Path) -> dict:
    """Median seconds per training step of `experiment` through Lightning, and items/s."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from omegaconf import OmegaConf

    from mixlab.core.config import build
    from mixlab.core.pipeline import build_callbacks, check_run_config

    gpu_overrides, (unit, keys) = SYSTEMS[experiment]
    steps = args.warmup + args.steps
    size = ["debug=smoke", "trainer=default"] if args.tiny else ["trainer=gpu", *gpu_overrides]
    cfg = compose(
        [
            f"experiment={experiment}",
            *size,
            f"paths.data_dir={args.data_dir}",
            "trainer.max_epochs=-1",
            f"++trainer.max_steps={steps}",
            "++trainer.limit_train_batches=1.0",
            "++trainer.limit_val_batches=0",
            "++trainer.val_check_interval=null",
            "trainer.check_val_every_n_epoch=1",
        ],
        work / experiment,
    )
    check_run_config(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    L.seed_everything(0, verbose=False)
    system = build(cfg.model)
    datamodule = build(cfg.data) if cfg.get("data") is not None else None
    if datamodule is not None:
        datamodule.prepare_data()
    timer = StepTimer()
    # the callbacks that act on every step (EMA, annealing, usage); none that needs validation or a logger
    callbacks = [
        cb
        for cb in build_callbacks(cfg.get("callbacks"))
        if not isinstance(cb, (ModelCheckpoint, EarlyStopping, LearningRateMonitor))
    ]
    trainer = build(
        cfg.trainer,
        callbacks=[timer, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(system, datamodule=datamodule)
    timed = timer.seconds[args.warmup :] or timer.seconds
    sec = statistics.median(timed)
    items = 1
    for key in keys:
        items *= int(OmegaConf.select(cfg, key))
    return {
        "section": "systems",
        "row": experiment,
        "precision": str(cfg.trainer.precision),
        "steps_timed": len(timed),
        "sec_per_step": sec,
        f"{unit}_per_sec": items / sec,
        "items_per_sec": items / sec,
        "unit": unit,
        "peak_memory_mb": peak_memory_mb(device),
    }


def bench_rows(args, device: torch.device) -> list[dict]:
    """The method benchmarks (tools/<method>/bench.py) at GPU or tiny sizes."""
    from tools.mcl import bench as mcl_bench
    from tools.samplers import bench as samplers_bench
    from tools.score import bench as score_bench
    from tools.sedd import bench as sedd_bench

    dev = ["--device", str(device)]
    tiny = args.tiny
    timing = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    rows = []
    score_variants = list(score_bench.VARIANTS)[:1] if tiny else list(score_bench.VARIANTS)
    for r in score_bench.main([*dev, *timing, "--batch", "8" if tiny else "128", "--variants", *score_variants]):
        rows.append({"section": "bench", **r, "row": f"baseline: {r['variant']}"})
    mcl_rows = "sparse" if tiny else ",".join(mcl_bench.ROWS)
    for r in mcl_bench.main([*dev, *timing, "--batch", "8" if tiny else "128", "--rows", mcl_rows]):
        rows.append({"section": "bench", **r, "row": f"mcl: {r['variant']}"})
    sedd = sedd_bench.main(
        [
            *dev,
            *timing,
            *(
                [
                    "--size",
                    "tiny",
                    "--vocab",
                    "64",
                    "--length",
                    "32",
                    "--batch",
                    "2",
                    "--no-compile",
                    "--sample-steps",
                    "4",
                    "--sample-batches",
                    "1",
                ]
                if tiny
                else ["--size", "small", "--length", "1024", "--batch", "8", "--sample-steps", "128", "--sample-batches", "32"]
            ),
        ]
    )
    rows += [{"section": "bench", **r, "row": f"sedd train: {r['variant']}"} for r in sedd.get("training", [])]
    rows += [
        {"section": "bench", **r, "row": f"sedd sample: {r['sampler']} T={r['steps']} B={r['batch']}"}
        for r in sedd.get("sampling", [])
    ]
    for r in samplers_bench.main(
        [
            *dev,
            *timing,
            "--dims",
            "8" if tiny else "32",
            "--rows",
            "TB" if tiny else ",".join(samplers_bench.ROWS),
            *(["--batch", "16", "--T", "4", "--ls-steps", "4"] if tiny else []),
        ]
    ):
        rows.append({"section": "bench", **r, "row": f"samplers: {r['variant']}"})
    return rows


def train_cli(args, work: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    size = ["debug=smoke"] if args.tiny else ["debug=smoke", "data.batch_size=128"]
    cmd = [
        sys.executable,
        "train.py",
        "experiment=baseline",
        *size,
        "model.net.dropout=0.0",
        f"paths.data_dir={args.data_dir}",
        "logger=csv",
        f"hydra.run.dir={work / name}",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_MODE": "offline"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def cli_rows(args, work: Path) -> list[dict]:
    """train.py on one GPU, under DDP with one process (NCCL), and an exact resume."""
    gpu = ["trainer=default"] if args.tiny else ["trainer=gpu"]
    ddp = ["trainer=ddp_cpu", "trainer.devices=1"] if args.tiny else ["trainer=ddp", "trainer.devices=1"]
    rows = []
    for name, folder, overrides in (
        ("train.py trainer=gpu, 2 epochs", "full", [*gpu, "trainer.max_epochs=2"]),
        ("train.py trainer=ddp trainer.devices=1", "ddp", [*ddp, "trainer.max_epochs=1"]),
        ("train.py 1 epoch (the run to resume)", "resumed", [*gpu, "trainer.max_epochs=1"]),
        ("train.py same run dir, resumed to 2 epochs", "resumed", [*gpu, "trainer.max_epochs=2"]),
    ):
        start = time.perf_counter()
        train_cli(args, work, folder, *overrides)
        rows.append({"section": "cli", "row": name, "seconds": time.perf_counter() - start, "ok": True})
    full, resumed = (
        torch.load(work / f / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False) for f in ("full", "resumed")
    )
    diff = max(
        (full["state_dict"][k].float() - v.float()).abs().max().item()
        for k, v in resumed["state_dict"].items()
        if v.is_floating_point()
    )
    rows.append(
        {
            "section": "cli",
            "row": "exact resume: max |Δweight| (2 epochs vs 1 + 1 resumed)",
            "max_abs_diff": diff,
            "ok": diff <= args.resume_tolerance,
            "global_step": int(resumed["global_step"]),
        }
    )
    return rows


def print_table(report: dict) -> None:
    print(f"\n{report['device']} — {'tiny (CPU)' if report['tiny'] else 'full'}")
    print(f"{'section':<8} {'row':<58} {'items/s':>12} {'ratio':>7} {'peak MB':>9}  other")
    for r in report["rows"]:
        rate = r.get("items_per_sec", r.get("images_per_sec", r.get("tokens_per_sec")))
        ratio = r.get("speedup_vs_reference", r.get("cost_vs_baseline", r.get("speedup")))
        other = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k in ("mfu", "nfe", "seconds", "max_abs_diff", "ok", "unit")
        )
        rate = "" if rate is None else f"{rate:.1f}"
        print(
            f"{r['section']:<8} {r['row'][:58]:<58} {rate:>12} "
            f"{'' if ratio is None else f'{ratio:.2f}x':>7} {r.get('peak_memory_mb', float('nan')):9.0f}  {other}"
        )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--tiny", action="store_true", help="the same code on the CPU at tiny sizes (seconds; what the test runs)")
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="where the experiments' data sets are (default: %(default)s)")
    p.add_argument("--sections", default="bench,systems,cli", help="comma-separated subset of bench,systems,cli")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 10 on a GPU, 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 on a GPU, 1 with --tiny)")
    p.add_argument("--resume-tolerance", type=float, default=1e-6, help="largest weight difference an exact resume may show")
    p.add_argument("--json", default="gpu_check.json", help="the report (default: %(default)s)")
    args = p.parse_args(argv)
    from mixlab.core.quiet import quiet_lightning

    quiet_lightning()
    sections = [s for s in args.sections.split(",") if s]
    if set(sections) - {"bench", "systems", "cli"}:
        p.error(f"--sections: choose from bench,systems,cli, got {args.sections!r}")
    if not args.tiny and not torch.cuda.is_available():
        p.error("no CUDA device visible: run on a GPU machine, or pass --tiny for the CPU check")
    args.steps = args.steps or (2 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    device = torch.device("cpu" if args.tiny else "cuda")
    report = {"device": device_name(device), "tiny": args.tiny, "torch": torch.__version__, "rows": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        if "bench" in sections:
            report["rows"] += bench_rows(args, device)
        if "systems" in sections:
            report["rows"] += [system_row(e, args, device, work) for e in SYSTEMS]
        if "cli" in sections:
            report["rows"] += cli_rows(args, work)
    report["seconds"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    print(f"\n{len(report['rows'])} rows in {report['seconds']:.0f} s -> {args.json}")
    failed = [r["row"] for r in report["rows"] if r.get("ok") is False]
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
