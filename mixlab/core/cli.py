"""The Hydra entry points (train.py, evaluate.py) in one place: compose conf/<name>.yaml, run the
task, and turn user-facing errors into one line on stderr with exit code 2.

Before Hydra runs, the command-line overrides are composed once more through Hydra's compose
API, so an unknown key or a malformed value is one line naming the key instead of Hydra's
multi-line report. `evaluate.py` also picks the evaluator from the checkpoint's system class.
"""

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mixlab.core.errors import ConfigError, MixlabError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def fail(err: MixlabError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 2))  # 2, or 128 + signal for a run stopped by a signal


def run_or_exit(fn: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    """Run the task; a MixlabError, or a full disk / read-only or forbidden folder met by any write
    (a figure, a sample grid, a log), is one line."""
    from mixlab.core.checkpoint_io import DISK_ERRNOS, disk_error

    try:
        fn(cfg)
    except MixlabError as err:
        fail(err)
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        fail(disk_error(err.filename or "a file", err, atomic=False))


def user_overrides(argv: list[str]) -> list[str]:
    """key=value arguments other than Hydra's own (flags, hydra.* and hydra/* groups)."""
    return [a for a in argv if not a.startswith("-") and "=" in a and not re.match(r"^[+~]*hydra[./]", a)]


def override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def _parse(override: str):
    """Hydra's own parse of one `key=value` argument; a malformed one or a value Hydra would read
    as a sweep (an unquoted comma) is a ConfigError naming the key as the user typed it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    key = override_key(override)
    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
    except OverrideParseException as err:
        raise ConfigError(
            key,
            f"cannot parse the value ({err.message.splitlines()[0]}); quote values with "
            f"spaces or special characters, e.g. '{key}=\"...\"'",
        ) from None
    if parsed.is_sweep_override():
        raise ConfigError(
            key,
            f"Hydra reads a comma-separated value as a sweep; quote the text, e.g. "
            f"'{key}=\"{parsed.input_line.split('=', 1)[1]}\"' (the shell needs the outer quotes)",
        )
    return parsed


def _composition_error(err: Exception, overrides: list, config_name: str, context: str) -> ConfigError:
    """A ConfigError naming the key of a failed composition, read from the exceptions' attributes
    (OmegaConf's `full_key`, Hydra's `missing_cfg_file` / `options`), never from message text."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    cause = err
    while cause is not None:
        if isinstance(cause, MissingConfigException) and cause.missing_cfg_file:
            group, _, name = cause.missing_cfg_file.rpartition("/")
            available = " ".join(cause.options or []) or "none"
            return ConfigError(
                group.replace("/", ".") or name,
                f"unknown option '{name}' (conf/{cause.missing_cfg_file}.yaml does not exist); available: {available}",
            )
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            key = str(cause.full_key)
            if context:
                return ConfigError(key, f"not an option {context}")
            return ConfigError(key, f"not a key of the config (a typo? `+{key}=...` adds a new key)")
        cause = cause.__cause__ or cause.__context__
    # `+key=value` for a key the config already has: found by composing without the additions
    from hydra import compose

    additions = [o for o in overrides if o.is_add() and not o.is_force_add()]
    if additions:
        base = compose(config_name, overrides=[o.input_line for o in overrides if o not in additions])
        for o in additions:
            if OmegaConf.select(base, o.key_or_group, default=None) is not None or o.key_or_group in base:
                return ConfigError(o.key_or_group, f"already in the config: drop the '+' ({o.key_or_group}=...)")
    first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
    return ConfigError("overrides", first)


def check_writable(path: Path, key: str) -> None:
    """The run dir `path` can be created and written (its nearest existing folder is writable and not
    on a read-only file system); else one line naming the key and the path."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if read_only else "no write permission"
        raise ConfigError(
            key,
            f"cannot write the run dir {path} ({existing} is on {why}); choose another folder "
            "with paths.log_dir=... or hydra.run.dir=...",
        )


def check_overrides(config_name: str, overrides: list[str], context: str = "", run_dir: str | None = None) -> None:
    """Compose conf/<config_name>.yaml with `overrides`; a composition error becomes one line
    naming the key (`context` says which evaluator / checkpoint the options were checked for).
    The run dir (`run_dir`, else the config's hydra.run.dir) must be writable."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    parsed = [_parse(o) for o in overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            try:
                cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
            except Exception as err:  # Hydra's ConfigCompositionException / MissingConfigException / OmegaConf errors
                raise _composition_error(err, parsed, config_name, context) from None
            key = "hydra.run.dir" if run_dir else "paths.log_dir"
            check_writable(Path(run_dir or OmegaConf.select(cfg, "hydra.run.dir")), key)
    finally:
        GlobalHydra.instance().clear()


def hydra_entry(config_name: str, task: Callable[[], Callable[[DictConfig], object]], context: str = "") -> None:
    """Run `task()(cfg)` under Hydra with conf/<config_name>.yaml (task imports lazily, so
    `--help` and config errors come back fast)."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    if not multirun and not any(a.startswith("--") for a in sys.argv[1:]):
        try:
            run_dir = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("hydra.run.dir=")), None)
            check_overrides(config_name, user_overrides(sys.argv[1:]), context, run_dir)
        except MixlabError as err:
            fail(err)

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        run_or_exit(task(), cfg)

    main()


def train_main() -> None:
    from mixlab.core.quiet import quiet_lightning

    quiet_lightning()

    def task():
        from mixlab.core.pipeline import train

        return train

    hydra_entry("train", task)


def evaluate_main() -> None:
    """`python evaluate.py ckpt=PATH [options]`: the checkpoint's system names its evaluator
    (`evaluator=NAME` picks another); options are checked against that evaluator's config."""
    from mixlab.core.evaluate import evaluator_for
    from mixlab.core.quiet import quiet_lightning

    quiet_lightning()
    args = sys.argv[1:]
    if any(a in ("--help", "-h", "--hydra-help") for a in args):
        return hydra_entry("eval", lambda: None)
    given = {override_key(a): a.split("=", 1)[1] for a in user_overrides(args)}
    try:
        if not given.get("ckpt"):
            raise ConfigError(
                "ckpt", "give the checkpoint to evaluate: python evaluate.py ckpt=PATH (a .ckpt file, a run dir or logs/<task>)"
            )
        ckpt, name, system_name = evaluator_for(given["ckpt"], given.get("evaluator"))
    except MixlabError as err:
        fail(err)
    rest = [a for a in args if override_key(a) not in ("ckpt", "evaluator") or a.startswith("-")]
    sys.argv = [sys.argv[0], f"ckpt={ckpt}", f"evaluator={name}", *rest]

    def task():
        from mixlab.core.evaluate import evaluate

        return evaluate

    hydra_entry("eval", task, context=f"of evaluator '{name}' (conf/evaluator/{name}.yaml) for this {system_name} checkpoint")
