"""Checks that turn a bad config into one clear line naming the key, before anything runs.

Only method-free checks live here (trainer numbers, optimizer / scheduler numbers, values left
`???`); each system checks its own keys in `check_config` and its constructor.
"""

import math
from collections.abc import Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from mixlab.core.errors import ConfigError


def require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def check_choice(value, choices, key: str) -> None:
    require(value in choices, key, f"unknown value '{value}' (choose {'|'.join(map(str, choices))})")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(value, key: str) -> None:
    require(is_int(value) and value > 0, key, f"must be a positive integer, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


def check_optimizer_numbers(root: DictConfig, prefix: str = "model") -> None:
    """Every torch.optim optimizer / scheduler under `root`: lr > 0, betas in [0, 1), eps > 0,
    weight_decay >= 0, momentum in [0, 1), and positive schedule lengths / factors."""
    for path, node in _targets(root, prefix):
        target = str(node._target_)
        if not target.startswith("torch.optim."):
            continue
        get = lambda name: node.get(name)  # noqa: E731
        if get("lr") is not None:
            require(_is_number(get("lr")) and get("lr") > 0, f"{path}.lr", f"must be a number > 0, got {get('lr')!r}")
        if get("betas") is not None:
            betas = list(get("betas"))
            require(len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas), f"{path}.betas",
                    f"must be two numbers in [0, 1), got {betas}")
        for name in ("weight_decay", "eps"):
            value = get(name)
            if value is not None:
                ok = _is_number(value) and (value >= 0 if name == "weight_decay" else value > 0)
                require(ok, f"{path}.{name}", f"must be a number {'>= 0' if name == 'weight_decay' else '> 0'}, got {value!r}")
        if get("momentum") is not None:
            require(_is_number(get("momentum")) and 0 <= get("momentum") < 1, f"{path}.momentum", f"must be in [0, 1), got {get('momentum')!r}")
        for name in ("T_max", "step_size", "total_steps", "T_0", "total_iters", "warmup_steps"):
            if get(name) is not None:
                require(is_int(get(name)) and get(name) > 0, f"{path}.{name}", f"must be a positive integer, got {get(name)!r}")
        for name in ("gamma", "factor"):
            if get(name) is not None:
                require(_is_number(get(name)) and get(name) > 0, f"{path}.{name}", f"must be a number > 0, got {get(name)!r}")


def check_trainer(trainer: DictConfig) -> None:
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    require(max_epochs is None or max_epochs == -1 or (is_int(max_epochs) and max_epochs >= 1), "trainer.max_epochs",
            f"must be >= 1 (or -1 / null with max_steps), got {max_epochs!r}")
    require(max_steps is None or max_steps == -1 or (is_int(max_steps) and max_steps >= 1), "trainer.max_steps",
            f"must be >= 1 (or -1), got {max_steps!r}")
    clip = trainer.get("gradient_clip_val")
    require(clip is None or (_is_number(clip) and clip >= 0), "trainer.gradient_clip_val", f"must be a number >= 0 or null, got {clip!r}")


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
