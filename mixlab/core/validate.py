"""Argument checking, written once per constructor.

A constructor (or function) states its argument types and bounds in its signature and is
decorated with `@checked`; pydantic checks them (strict: no bool for an int, no string for a
number, no NaN / inf):

    class LocalSearch:
        @checked
        def __init__(self, steps: PositiveInt = 200, step_size: PositiveFloat = 0.01): ...

A failing argument raises `ArgumentError` naming the argument (`steps: must be >= 1, got 0`).
Rules that involve several arguments raise `ArgumentError(name, problem)` themselves. When the
object is built from a config, `mixlab.core.config.build` prefixes the full key path
(`model.local_search.steps: must be >= 1, got 0`), so no class spells its place in the config.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, validate_call

from mixlab.core.errors import ArgumentError, ConfigError

F = TypeVar("F", bound=Callable)

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]  # a probability / fraction in [0, 1]
OpenUnitFloat = Annotated[float, Field(ge=0, lt=1)]  # [0, 1), e.g. a momentum or a decay
Count = Literal[-1] | PositiveInt | None  # Lightning's "max_epochs / max_steps": >= 1, or -1 / null for no limit

_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True, allow_inf_nan=False)

_PHRASES = (
    ("Input should be greater than or equal to", "must be >="),
    ("Input should be greater than", "must be >"),
    ("Input should be less than or equal to", "must be <="),
    ("Input should be less than", "must be <"),
    ("Input should be a finite number", "must be a finite number"),
    ("Input should be a valid integer", "must be an integer"),
    ("Input should be a valid number", "must be a number"),
    ("Input should be a valid boolean", "must be true or false"),
    ("Input should be a valid string", "must be a string"),
    ("Input should be", "must be"),
)


def _plain(value):
    """OmegaConf containers as plain lists / dicts (what a constructor called from Python gets)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _problem(error: dict) -> str:
    if error.get("type") in ("unexpected_keyword_argument", "extra_forbidden"):
        return "not an argument (a typo?)"
    if error.get("type") == "missing_argument":
        return "must be given"
    message = error.get("msg", "invalid")
    for phrase, plain in _PHRASES:
        if message.startswith(phrase):
            return plain + message[len(phrase) :]
    return message


def _describe(errors: list[dict], names: list[str], arguments: dict | None = None) -> tuple[str, str]:
    """(argument name, problem) of a failed validate_call / TypeAdapter: the first failing argument;
    the alternatives of a union are joined ("must be -1 or >= 1 or None, got 0"). `arguments`: the
    call's arguments by name, to name a key inside a dict argument (`sampler.steps`)."""
    arguments = arguments or {}

    def arg_of(error):
        """The argument's name, then the keys / indices into its value that pydantic's location
        follows (not the union members it tried, e.g. `literal['auto']`)."""
        loc = list(error.get("loc") or ("",))
        parts = [names[loc[0]] if isinstance(loc[0], int) and loc[0] < len(names) else str(loc[0])]
        value = arguments.get(parts[0])
        for part in loc[1:]:
            if isinstance(value, dict) and part in value:
                parts.append(str(part))
            elif isinstance(value, (list, tuple)) and isinstance(part, int) and part < len(value):
                parts[-1] += f"[{part}]"
            else:
                continue
            value = value[part]
        return ".".join(parts)

    arg = arg_of(errors[0])
    mine = [e for e in errors if arg_of(e) == arg]
    problems = list(dict.fromkeys(_problem(e) for e in mine))
    problem = " or ".join(p.removeprefix("must be ") if i else p for i, p in enumerate(problems))
    if mine[0].get("type") not in ("unexpected_keyword_argument", "extra_forbidden", "missing_argument"):
        problem += f", got {mine[0].get('input')!r}"
    return arg or "arguments", problem


def checked(fn: F) -> F:
    """Check `fn`'s arguments against its annotations (pydantic, strict); a failure raises
    ArgumentError naming the first failing argument. Works on functions and `__init__`."""
    inner = validate_call(config=_STRICT)(fn)
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(_plain(a) for a in args)
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        try:
            return inner(*args, **kwargs)
        except ValidationError as err:
            arg, problem = _describe(err.errors(), names, {**dict(zip(names, args)), **kwargs})
            raise ArgumentError(arg, problem) from None

    return wrapper  # type: ignore[return-value]


@functools.cache
def _adapter(kind) -> TypeAdapter:
    return TypeAdapter(kind, config=_STRICT)


def check_value(value, kind, key: str):
    """`value` checked against the type `kind` (e.g. PositiveInt) by the same rules as `@checked`;
    returns it, or raises ConfigError naming `key`. For config values that are no constructor's
    argument (trainer and optimizer numbers, evaluator options)."""
    try:
        return _adapter(kind).validate_python(_plain(value))
    except ValidationError as err:
        raise ConfigError(key, _describe([dict(e, loc=()) for e in err.errors()], [])[1]) from None
