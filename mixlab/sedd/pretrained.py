"""Turn the released SEDD weights into a mixlab checkpoint, so `make eval` / `make sample-text`
score and sample them: `python -m mixlab.sedd.pretrained louaaron/sedd-small --out ckpts/sedd-small.ckpt`.

The source is a Hugging Face repo id (downloaded with huggingface_hub when online) or a local
directory holding its files: `config.json` (hidden_size, n_blocks, n_heads, cond_dim, ...) and
`model.safetensors` or `pytorch_model.bin` (the reference `SEDD` module's state dict, mapped by
mixlab.nets.dit_weights). The released models are absorbing + log-linear + scale_by_sigma on
GPT-2 BPE (vocab 50257 + MASK), length 1024: the checkpoint's config is experiment=sedd_absorb
with the net's sizes from config.json, evaluated on `data=` (default the offline classics).
"""

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from mixlab.core.config import build
from mixlab.core.errors import ConfigError, DataNotFoundError
from mixlab.core.network import internet_reachable
from mixlab.nets.dit_weights import load_reference_state_dict

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def snapshot(source: str) -> Path:
    """A local directory with the repo's files (downloaded when `source` is not a directory)."""
    if Path(source).is_dir():
        return Path(source)
    if not internet_reachable("huggingface.co", 443):
        raise DataNotFoundError(f"{source}: huggingface.co is not reachable; download the repo elsewhere and pass its directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DataNotFoundError("huggingface_hub is not installed: pip install -e '.[text]'") from None
    return Path(snapshot_download(source))


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConfigError("source", f"{folder} holds neither model.safetensors nor pytorch_model.bin")


def net_sizes(folder: Path) -> dict:
    """hidden / n_blocks / n_heads / cond_dim / length from the reference's config.json (its model block)."""
    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    model = cfg.get("model", cfg)
    try:
        return {
            "hidden": int(model["hidden_size"]),
            "n_blocks": int(model["n_blocks"]),
            "n_heads": int(model["n_heads"]),
            "cond_dim": int(model["cond_dim"]),
            "length": int(model.get("length", 1024)),
        }
    except KeyError as err:
        raise ConfigError("source", f"{folder}/config.json lacks the model size {err}") from None


def convert(source: str, out: str | Path, data: str = "text_classics_gpt2", data_dir: str | None = None) -> Path:
    """Write a mixlab checkpoint of the released model `source`; returns its path."""
    folder = snapshot(source)
    sizes, weights = net_sizes(folder), read_weights(folder)
    GlobalHydra.instance().clear()
    overrides = [
        "experiment=sedd_absorb",
        f"data={data}",
        f"data.length={sizes['length']}",
        "model.vocab_size=50257",
        *(f"model.net.{k}={v}" for k, v in sizes.items() if k != "length"),
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(out).parent)
        if data_dir:
            cfg.paths.data_dir = data_dir
        cfg.task_name = f"pretrained_{Path(str(source)).name}"
    system = build(cfg.model)
    try:
        load_reference_state_dict(system.net, weights)
    except ValueError as err:
        raise ConfigError("source", str(err)) from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": system.state_dict(),
            "mixlab_config": OmegaConf.to_container(cfg, resolve=True),
            "epoch": None,
            "global_step": None,
            "pretrained_from": str(source),
        },
        out,
    )
    print(f"[mixlab] {source} -> {out} (DiT {sizes['hidden']} x {sizes['n_blocks']}; evaluate with make eval ckpt={out})")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="louaaron/sedd-small | louaaron/sedd-medium | a local directory with its files")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="text_classics_gpt2", help="the data config the checkpoint is evaluated on")
    args = p.parse_args(argv)
    from mixlab.core.errors import MixlabError

    try:
        convert(args.source, args.out, args.data)
    except MixlabError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
