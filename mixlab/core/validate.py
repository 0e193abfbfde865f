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
from typing import Annotated, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import ConfigDict, Field, ValidationError, validate_call

from mixlab.core.errors import ArgumentError

F = TypeVar("F", bound=Callable)

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]  # a probability / fraction in [0, 1]
OpenUnitFloat = Annotated[float, Field(ge=0, lt=1)]  # [0, 1), e.g. a momentum or a decay

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


def _describe(error: dict, names: list[str]) -> tuple[str, str]:
    """(argument name, problem) of one pydantic error of a validate_call."""
    loc = list(error.get("loc") or ())
    if loc and isinstance(loc[0], int) and loc[0] < len(names):
        loc[0] = names[loc[0]]
    arg = ".".join(str(part) for part in loc) or "arguments"
    if error.get("type") == "unexpected_keyword_argument":
        return arg, "not an argument (a typo?)"
    if error.get("type") == "missing_argument":
        return arg, "must be given"
    message = error.get("msg", "invalid")
    for phrase, plain in _PHRASES:
        if message.startswith(phrase):
            message = plain + message[len(phrase):]
            break
    return arg, f"{message}, got {error.get('input')!r}"


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
            arg, problem = _describe(err.errors()[0], names)
            raise ArgumentError(arg, problem) from None

    return wrapper  # type: ignore[return-value]
