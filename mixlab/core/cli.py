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
from omegaconf import DictConfig

from mixlab.core.errors import ConfigError, MixlabError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def fail(err: MixlabError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 2))  # 2, or 128 + signal for a run stopped by a signal


def run_or_exit(fn: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    try:
        fn(cfg)
    except MixlabError as err:
        fail(err)


def user_overrides(argv: list[str]) -> list[str]:
    """key=value arguments other than Hydra's own (flags, hydra.* and hydra/* groups)."""
    return [a for a in argv if not a.startswith("-") and "=" in a and not re.match(r"^[+~]*hydra[./]", a)]


def override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


KEY_PATTERNS = (r"override '([^'=]+)", r"full_key: (\S+)", r"Could not find '([^/']+)/", r"An item is already at '([^']+)'")


def check_overrides(config_name: str, overrides: list[str], context: str = "") -> None:
    """Compose conf/<config_name>.yaml with `overrides`; a composition error becomes one line
    naming the key (`context` says which evaluator / checkpoint the options were checked for)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except Exception as err:  # Hydra's ConfigCompositionException / OmegaConf errors / override grammar
        message = str(err).strip() or type(err).__name__
        found = next((m for m in (re.search(p, message) for p in KEY_PATTERNS) if m), None)
        key = found.group(1) if found else "overrides"
        first = message.splitlines()[0].rstrip(".")
        if "not in struct" in message or "Could not override" in message:
            first = f"not an option {context}" if context else f"not a key of the config (a typo? `+{key}=...` adds a new key)"
        elif "Could not find" in message:
            options = re.search(r"Available options in '[^']+':\s*(.*)", message, re.S)
            first = f"{first}; available: {' '.join(options.group(1).split()) if options else '?'}"
        raise ConfigError(key, first) from None
    finally:
        GlobalHydra.instance().clear()


def hydra_entry(config_name: str, task: Callable[[], Callable[[DictConfig], object]], context: str = "") -> None:
    """Run `task()(cfg)` under Hydra with conf/<config_name>.yaml (task imports lazily, so
    `--help` and config errors come back fast)."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    if not multirun and not any(a.startswith("--") for a in sys.argv[1:]):
        try:
            check_overrides(config_name, user_overrides(sys.argv[1:]), context)
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
            raise ConfigError("ckpt", "give the checkpoint to evaluate: python evaluate.py ckpt=PATH (a .ckpt file, a run dir or logs/<task>)")
        ckpt, name, system_name = evaluator_for(given["ckpt"], given.get("evaluator"))
    except MixlabError as err:
        fail(err)
    rest = [a for a in args if override_key(a) not in ("ckpt", "evaluator") or a.startswith("-")]
    sys.argv = [sys.argv[0], f"ckpt={ckpt}", f"evaluator={name}", *rest]

    def task():
        from mixlab.core.evaluate import evaluate

        return evaluate

    hydra_entry("eval", task, context=f"of evaluator '{name}' (conf/evaluator/{name}.yaml) for this {system_name} checkpoint")
