"""Every checkpoint read goes through here: an unreadable file is one line naming the file and
the config key it came from (resume `ckpt_path`, `evaluate.py ckpt=`, and any key of a method
that starts from another run), and a run or task directory is resolved to a checkpoint by the code.

A mixlab checkpoint is a Lightning checkpoint plus `mixlab_config` (the composed run config),
from which `load_system` rebuilds the system. Its sha256 sidecar (`<name>.ckpt.sha256`, see
core.checkpoint_io) is verified on every read; a file without one (older runs, foreign files) is
accepted if it loads.
"""

import json
import warnings
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mixlab.core.checkpoint_io import verify_digest
from mixlab.core.errors import ConfigError, MixlabError
from mixlab.core.system import SYSTEM_KEY


def read_checkpoint(path: str | Path, key: str, mmap: bool = False, error: type[MixlabError] = ConfigError) -> dict:
    """torch.load on CPU; a missing, truncated or corrupt file, or one whose content no longer
    matches its sha256 sidecar, raises `error(key, problem)` in one line (ConfigError for a config
    key; ArgumentError when `key` is a constructor's argument).
    `mmap=True` maps the tensors instead of reading them (cheap peeks at the config)."""
    path = Path(path)
    if not path.is_file():
        raise error(key, f"checkpoint file {path} does not exist")
    if problem := verify_digest(path):
        raise error(key, f"checkpoint {path} is damaged ({problem})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # zip, pickle, EOF, unicode, ... errors: the file is unusable whatever the cause
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(
            key,
            f"cannot read checkpoint {path} ({type(err).__name__}: {reason[:160]}); it is truncated or not a PyTorch checkpoint",
        ) from None
    if not isinstance(ckpt, dict):
        raise error(key, f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def furthest_intact(paths: list[Path]) -> tuple[Path | None, list[Path]]:
    """(the readable checkpoint with the highest global_step, the unreadable ones skipped).

    Ties go to last.ckpt, then to the newer file. Not by modification time alone: a run
    directory copied without `cp -p` gives best_*.ckpt a newer mtime than last.ckpt.
    """
    readable, skipped = [], []
    for path in paths:
        try:
            step = int(read_checkpoint(path, "ckpt_path", mmap=True).get("global_step", -1))
        except ConfigError:
            skipped.append(path)
            continue
        readable.append((step, path.name == "last.ckpt", path.stat().st_mtime, path))
    return (max(readable)[-1] if readable else None), skipped


def damage(path: Path) -> str:
    """What is wrong with a checkpoint that furthest_intact skipped, in a few words."""
    if problem := verify_digest(path):
        return problem.split(":")[0]  # "checksum mismatch"
    try:
        read_checkpoint(path, "ckpt_path", mmap=True)
    except ConfigError:
        return "truncated or corrupt"
    return "unreadable"


def check_resume_fits(ckpt_path: str | None, cfg: DictConfig) -> None:
    """A checkpoint to resume from must have been written for the system this run trains: a
    foreign one is one line naming both classes, before any training."""
    if not ckpt_path:
        return
    stored = (read_checkpoint(ckpt_path, "ckpt_path", mmap=True).get("mixlab_config") or {}).get("model") or {}
    theirs, ours = str(stored.get("_target_", "")).rsplit(".", 1)[-1], str(cfg.model._target_).rsplit(".", 1)[-1]
    if theirs and theirs != ours:
        run = f"experiment {cfg.task_name}" if cfg.get("task_name") else "this run"
        raise ConfigError("ckpt_path", f"{ckpt_path} is a {theirs} checkpoint; {run} trains {ours}")


def check_state_fits(ckpt_path: str | None, system) -> None:
    """Same class, other shapes (another number of experts, another net width, ...): one line with
    the first differing keys, instead of Lightning's list of missing and unexpected keys."""
    if not ckpt_path or not getattr(system, "strict_loading", True):
        return
    stored = read_checkpoint(ckpt_path, "ckpt_path", mmap=True).get("state_dict")
    if not isinstance(stored, dict):
        return
    ours = system.state_dict()
    missing, unexpected = sorted(set(ours) - set(stored)), sorted(set(stored) - set(ours))
    reshaped = sorted(
        k for k in set(ours) & set(stored) if hasattr(stored[k], "shape") and tuple(stored[k].shape) != tuple(ours[k].shape)
    )
    if missing or unexpected or reshaped:
        parts = [
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
            if keys
        ]
        raise ConfigError(
            "ckpt_path",
            f"{ckpt_path} does not fit the configured model ({'; '.join(parts)}): it was trained with other model options",
        )


def resume_candidates(run_dir: Path) -> list[Path]:
    """The run's checkpoints, and those Lightning's SLURM auto-requeue writes (`hpc_ckpt_<n>.ckpt`)."""
    return sorted((run_dir / "checkpoints").glob("*.ckpt")) + sorted(run_dir.glob("hpc_ckpt_*.ckpt"))


def resolve_resume(ckpt_path: str | None, output_dir: Path, task_dir: Path) -> str | None:
    """What `trainer.fit` resumes from.

    None: this run dir's furthest intact checkpoint (auto-resume after a kill), or a fresh start.
    "last": the furthest intact checkpoint of the newest run under `<task_dir>/runs/` (newest by
    its newest checkpoint file; a run with none readable is passed over). A path: that file,
    which must be readable. A skipped unreadable file is named in a warning.
    """
    if ckpt_path in (None, ""):
        found, skipped = furthest_intact(resume_candidates(output_dir))
    elif ckpt_path == "last":
        runs = [paths for paths in map(resume_candidates, task_dir.glob("runs/*/")) if paths]
        if not runs:
            raise ConfigError("ckpt_path", f"'last' but there is no {task_dir}/runs/*/checkpoints/*.ckpt; pass a path instead")
        found, skipped = None, []
        for paths in sorted(runs, key=lambda paths: max(p.stat().st_mtime for p in paths), reverse=True):
            found, unreadable = furthest_intact(paths)
            skipped += unreadable
            if found is not None:
                break
    else:
        read_checkpoint(ckpt_path, "ckpt_path", mmap=True)
        return str(ckpt_path)
    for path in skipped:
        warnings.warn(
            f"[mixlab] skipped unreadable checkpoint {path} ({damage(path)}); resuming from {found or 'scratch'}", stacklevel=2
        )
    if found is None and skipped and ckpt_path == "last":
        raise ConfigError("ckpt_path", f"no readable checkpoint under {task_dir}/runs/*/checkpoints/")
    return str(found) if found else None


def resolve_checkpoint(path: str | Path, key: str, prefer: str = "best", error: type[MixlabError] = ConfigError) -> Path:
    """A checkpoint file as given, or found in a directory: a run dir (`summary.json` names its
    best and last checkpoints; else `checkpoints/last.ckpt`) or a task dir `logs/<task>` (its
    newest run). `prefer`: best (validation-selected) or last. Failures raise `error(key, problem)`."""
    path = Path(path)
    if path.is_file() or not path.is_dir():
        return path
    runs = sorted((path / "runs").glob("*/"), key=lambda p: p.stat().st_mtime) if (path / "runs").is_dir() else []
    run = runs[-1] if runs else path
    summary = run / "summary.json"
    if summary.is_file():
        named = json.loads(summary.read_text())
        for field in (f"{prefer}_ckpt", "last_ckpt", "best_ckpt"):
            if named.get(field) and Path(named[field]).is_file():
                return Path(named[field])
    found, _ = furthest_intact(resume_candidates(run))
    if found is None:
        raise error(key, f"no checkpoint found in {path} (looked for {run}/summary.json and {run}/checkpoints/*.ckpt)")
    return found


def run_config(ckpt: dict, path: Path, key: str) -> DictConfig:
    if "mixlab_config" not in ckpt or not ckpt["mixlab_config"]:
        raise ConfigError(key, f"{path} has no mixlab_config: not written by mixlab's train.py")
    return OmegaConf.create(ckpt["mixlab_config"])


def system_class(target: str, key: str = f"{SYSTEM_KEY}._target_"):
    """The class named by a `_target_`, or one line saying it cannot be imported."""
    try:
        return get_class(target)
    except Exception as err:
        raise ConfigError(
            key,
            f"cannot import system class '{target}' ({type(err).__name__}); "
            "a checkpoint written by an older mixlab layout, or a typo",
        ) from None


def load_system(path: str | Path, device: torch.device | str = "cpu", key: str = "ckpt") -> tuple:
    """(system in eval mode with its EMA weights, run config, raw checkpoint dict).

    `path` is a checkpoint file, a run dir or a task dir (resolve_checkpoint: its validation-selected
    checkpoint), so every checkpoint option accepts what `ckpt=` accepts. The system is rebuilt
    from the config stored in the checkpoint; `on_load_checkpoint` lets it restore what lives
    outside the state_dict (statistics kept by callbacks, say).
    """
    from mixlab.core.config import build

    path = resolve_checkpoint(path, key)
    ckpt = read_checkpoint(path, key)
    cfg = run_config(ckpt, path, key)
    system_class(cfg.model._target_, key)
    system = build(cfg.model)
    system.load_state_dict(ckpt["state_dict"])  # WeightAveraging stored the EMA weights here
    system.on_load_checkpoint(ckpt)
    return system.to(device).eval(), cfg, ckpt
