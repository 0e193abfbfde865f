"""`python -m tools.samplers.draw ckpt=PATH n=N [seed=0 out=FILE.pt batch_size=500 device=auto]`

Draws n samples x_1 from a trained sampler (no exploration) and writes them with their
importance log-weights for downstream use:

    {"x": [n,d] float32, "log_w": [n] float64 = log R(x_1) + S_B - S_F, "log_r": [n],
     "log_z_hat": mean log_w, "log_z_rw": logmeanexp log_w, "ckpt", "experiment", "energy", "seed"}

Self-normalised importance sampling of f under R / Z: sum_k softmax(log_w)_k f(x_k); the
effective sample size is 1 / sum_k softmax(log_w)_k^2. `ckpt` is a .ckpt, a run dir or a task dir
(as for evaluate.py); the default `out` is <run>/eval/draw_n<n>_seed<seed>.pt.
"""

import sys
from pathlib import Path

import torch

from mixlab.core.checkpoint import load_system, resolve_checkpoint
from mixlab.core.errors import ConfigError, MixlabError
from mixlab.core.evaluate import resolve_device
from mixlab.samplers.metrics import log_z_elbo, log_z_iw

OPTIONS = {"ckpt": None, "n": None, "seed": "0", "out": None, "batch_size": "500", "device": "auto"}


def parse(argv: list[str]) -> dict:
    opts = dict(OPTIONS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise ConfigError(key or arg, f"not an option (key=value with key in {', '.join(OPTIONS)})")
        opts[key] = value
    for key in ("ckpt", "n"):
        if not opts[key]:
            raise ConfigError(key, "required: python -m tools.samplers.draw ckpt=PATH n=N")
    for key, low in (("n", 1), ("seed", 0), ("batch_size", 1)):
        try:
            opts[key] = int(opts[key])
        except ValueError:
            raise ConfigError(key, f"must be an integer, got {opts[key]!r}") from None
        if opts[key] < low:
            raise ConfigError(key, f"must be >= {low}, got {opts[key]}")
    return opts


def draw_samples(ckpt: str, n: int, seed: int = 0, out: str | None = None, batch_size: int = 500, device: str = "auto") -> Path:
    path = resolve_checkpoint(ckpt, "ckpt")
    system, run_cfg, _ = load_system(path, resolve_device(device))
    system.energy.prepare()
    result = system.sample_trajectories(n, torch.Generator(device=system.device).manual_seed(seed), batch_size)
    out_path = Path(out) if out else path.resolve().parent.parent / "eval" / f"draw_n{n}_seed{seed}.pt"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "x": result["x"].float().cpu(),
            "log_w": result["log_w"].cpu(),
            "log_r": result["log_r"].cpu(),
            "log_z_hat": log_z_elbo(result["log_w"]),
            "log_z_rw": log_z_iw(result["log_w"]),
            "ckpt": str(path.resolve()),
            "experiment": run_cfg.get("task_name"),
            "energy": type(system.energy).__name__,
            "seed": seed,
        },
        out_path,
    )
    return out_path


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse(sys.argv[1:] if argv is None else argv)
        out = draw_samples(opts["ckpt"], opts["n"], opts["seed"], opts["out"], opts["batch_size"], opts["device"])
    except MixlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    data = torch.load(out, weights_only=False)
    w = torch.softmax(data["log_w"], 0)
    print(
        f"[mixlab] {len(data['x'])} samples of {data['experiment']} -> {out} "
        f"(log Z^ {data['log_z_hat']:.4f}, log Z^_RW {data['log_z_rw']:.4f}, ESS {float(1 / (w**2).sum()):.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
