"""Checks that turn a bad config into one clear line naming the key, before anything runs."""

import torch
from omegaconf import DictConfig, ListConfig

from mixlab.score.solvers import SOLVERS
from mixlab.score.schedule import SIGMA_GRIDS
from mixlab.core.errors import ConfigError


def require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def check_choice(value, choices, key: str) -> None:
    require(value in choices, key, f"unknown value '{value}' (choose {'|'.join(choices)})")


def check_positive_int(value, key: str) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key, f"must be a positive integer, got {value!r}")


def check_sampler(node, prefix: str) -> None:
    """solver / steps / grid of a sampling block (model.sampler, callbacks.sample_grid, eval)."""
    if node is None:
        return
    key = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: name)
    if "solver" in node:
        check_choice(node.solver, list(SOLVERS), key("solver"))
    if "steps" in node:
        check_positive_int(node.steps, key("steps"))
    if "grid" in node:
        check_choice(node.grid, list(SIGMA_GRIDS), key("grid"))


def world_size(trainer: DictConfig) -> int:
    """Number of processes the trainer config asks for (devices x num_nodes)."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    accelerator = str(trainer.get("accelerator", "auto"))
    if isinstance(devices, (list, ListConfig)):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif str(devices) in ("auto", "-1"):
        gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    else:
        try:
            count = int(devices)
        except ValueError:
            raise ConfigError("trainer.devices", f"cannot read '{devices}' as a device count") from None
        require(count > 0, "trainer.devices", f"must be >= 1 (or auto / -1), got {devices}")
    return count * int(nodes)


def validate_diffusion_model(model: DictConfig) -> None:
    from mixlab.score.system import PRECONDS

    check_choice(model.get("precond", "eps"), list(PRECONDS), "model.precond")
    smin, smax = model.get("sigma_min", 0.01), model.get("sigma_max", 80.0)
    require(0 < smin < smax, "model.sigma_min", f"need 0 < sigma_min < sigma_max, got {smin} and {smax}")
    check_sampler(model.get("sampler"), "model.sampler")


def validate_mcl_model(model: DictConfig, callbacks) -> None:
    k = model.get("num_experts")
    require(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "model.num_experts", f"must be an integer >= 1, got {k!r}")
    target = str((model.get("assignment") or {}).get("_target_", ""))
    if target.endswith("AnnealedWTA"):
        require(callbacks.get("temperature") is not None, "callbacks.temperature",
                "annealed WTA needs the TemperatureAnnealing callback (use callbacks=mcl, or another model/assignment)")
    if target.endswith("ResilientMCL"):
        require(model.get("scorer") is not None, "model.scorer", "resilient MCL needs scoring heads (model/assignment=resilient sets them)")


def validate_train(cfg: DictConfig) -> int:
    """Validate a composed train config; returns the world size."""
    from mixlab.data.mnist import per_device_batch_size

    for key in ("data", "model", "trainer"):
        require(cfg.get(key) is not None, key, "missing from the config")
    if "sampler" in cfg.model or "sigma_min" in cfg.model:
        validate_diffusion_model(cfg.model)
    callbacks = cfg.get("callbacks") or {}
    if "experts_ckpt" in cfg.model.keys():  # `in cfg.model` is False while the value is ???
        from omegaconf import OmegaConf

        require(not OmegaConf.is_missing(cfg.model, "experts_ckpt") and bool(cfg.model.experts_ckpt), "model.experts_ckpt",
                "give the trained MCL checkpoint the gate routes between: model.experts_ckpt=PATH")
    if "num_experts" in cfg.model and "assignment" in cfg.model:
        validate_mcl_model(cfg.model, callbacks)
    if callbacks.get("sample_grid") is not None:
        check_sampler(callbacks.sample_grid, "callbacks.sample_grid")
    max_epochs = cfg.trainer.get("max_epochs")
    require(max_epochs is None or max_epochs == -1 or max_epochs >= 1, "trainer.max_epochs", f"must be >= 1, got {max_epochs}")
    world = world_size(cfg.trainer)
    per_device_batch_size(cfg.data.batch_size, world)
    return world


def build(node, **kwargs):
    """hydra.utils.instantiate, but a MixlabError raised by a constructor (e.g. a ConfigError
    naming the key) comes out as itself rather than wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from mixlab.core.errors import MixlabError

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, MixlabError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
