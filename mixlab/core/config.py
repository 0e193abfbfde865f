"""Checks that turn a bad config into one clear line naming the key, before anything runs.

Only method-free checks live here (trainer numbers, optimizer / scheduler numbers, values left
`???`); each system checks its own keys in `check_config` and its constructor.
"""

from collections.abc import Iterator
from typing import Annotated

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import Field

from mixlab.core.errors import ConfigError
from mixlab.core.validate import Count, NonNegativeFloat, OpenUnitFloat, PositiveFloat, PositiveInt, check_value


def require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def check_missing(cfg: DictConfig) -> None:
    """Values left `???` (mandatory, e.g. a checkpoint to start from) name their key (the full key:
    OmegaConf reports it from the config's root)."""
    for key in sorted(OmegaConf.missing_keys(cfg)) if isinstance(cfg, DictConfig) else ():
        raise ConfigError(key, f"must be given on the command line ({key}=...)")


def _targets(node, path: str) -> Iterator[tuple[str, DictConfig]]:
    """(key, node) for every node with a `_target_` below `node` (depth first)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            if key != "_target_" and not OmegaConf.is_missing(node, key):
                yield from _targets(node[key], f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _targets(item, f"{path}[{i}]")


_OPTIMIZER_BOUNDS = {
    "lr": PositiveFloat,
    "eps": PositiveFloat,
    "weight_decay": NonNegativeFloat,
    "momentum": OpenUnitFloat,
    "betas": Annotated[list[OpenUnitFloat], Field(min_length=2, max_length=2)],
    "gamma": PositiveFloat,
    "factor": PositiveFloat,
    **dict.fromkeys(("T_max", "step_size", "total_steps", "T_0", "total_iters", "warmup_steps"), PositiveInt),
}


def check_optimizer_numbers(root: DictConfig, prefix: str = "model") -> None:
    """Every torch.optim optimizer / scheduler under `root`: lr > 0, betas in [0, 1), eps > 0,
    weight_decay >= 0, momentum in [0, 1), and positive schedule lengths / factors (torch checks
    some of these only when the optimizer is built, after data is loaded)."""
    for path, node in _targets(root, prefix):
        if str(node._target_).startswith("torch.optim."):
            for name, kind in _OPTIMIZER_BOUNDS.items():
                if node.get(name) is not None:
                    check_value(node.get(name), kind, f"{path}.{name}")


def check_trainer(trainer: DictConfig) -> None:
    check_value(trainer.get("max_epochs"), Count, "trainer.max_epochs")
    check_value(trainer.get("max_steps"), Count, "trainer.max_steps")
    check_value(trainer.get("gradient_clip_val"), NonNegativeFloat | None, "trainer.gradient_clip_val")


_KEY = "_mixlab_key_"
_TARGET = "_mixlab_target_"


def _keyed(node, path: str):
    """A plain copy of `node` in which every `_target_` node calls `call_keyed` with its key path."""
    if isinstance(node, dict):
        out = {k: _keyed(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if "_target_" in out:
            out[_TARGET], out[_KEY], out["_target_"] = out["_target_"], path, "mixlab.core.config.call_keyed"
        return out
    if isinstance(node, list):
        return [_keyed(v, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


def call_keyed(*args, _mixlab_target_: str, _mixlab_key_: str, **kwargs):
    """Call the config node's target; an ArgumentError (a bad argument, named relative to the
    callee) becomes a ConfigError naming the node's full key path."""
    from hydra.utils import get_object

    from mixlab.core.errors import ArgumentError

    try:
        return get_object(_mixlab_target_)(*args, **kwargs)
    except ArgumentError as err:
        key = f"{_mixlab_key_}.{err.arg}" if _mixlab_key_ else err.arg
        raise ConfigError(key, err.problem) from None


def build(node, key: str | None = None, **kwargs):
    """hydra.utils.instantiate of a config node, with errors for the user:
    - an argument a constructor rejects (`mixlab.core.validate.checked`, ArgumentError) is a
      ConfigError naming the full key path, e.g. `model.local_search.steps: must be >= 1, got 0`
      (`key` is the node's path; by default its place in the config it belongs to);
    - any MixlabError raised by a constructor comes out as itself, not wrapped in Hydra's
      InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from mixlab.core.errors import MixlabError

    if isinstance(node, DictConfig):
        if key is None:
            key = node._get_full_key(None) or ""
        node = OmegaConf.to_container(node, resolve=True)
    try:
        return instantiate(_keyed(node, key or ""), **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, MixlabError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
