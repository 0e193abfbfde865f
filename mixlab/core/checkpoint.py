"""Rebuild a trained system from a mixlab checkpoint (used by evaluation, gate training, analysis)."""

from pathlib import Path

import torch

from omegaconf import DictConfig, OmegaConf

from mixlab.core.config import build, require


def load_system(ckpt_path: str | Path, device: torch.device | str = "cpu", key: str = "ckpt") -> tuple:
    """(system in eval mode with its EMA weights, run config, raw checkpoint dict).

    The system is rebuilt from the config stored in the checkpoint; `on_load_checkpoint` lets
    it restore what lives outside the state_dict (e.g. MCL usage statistics).
    """
    path = Path(ckpt_path)
    require(path.is_file(), key, f"checkpoint file {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    require("mixlab_config" in ckpt, key, f"{path} has no mixlab_config: not written by mixlab's train.py")
    run_cfg: DictConfig = OmegaConf.create(ckpt["mixlab_config"])
    system = build(run_cfg.model)
    system.load_state_dict(ckpt["state_dict"])  # WeightAveraging stored the EMA weights here
    system.on_load_checkpoint(ckpt)
    return system.to(device).eval(), run_cfg, ckpt
