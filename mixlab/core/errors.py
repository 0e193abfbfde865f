"""User-facing errors: each carries one line that says what is wrong and how to fix it.

Entry points (train.py / evaluate.py) print these without a traceback and exit with code 2.
"""


class MixlabError(Exception):
    """Base class for errors whose message is meant for the user, not for a debugger."""


class ConfigError(MixlabError):
    """An invalid configuration value. The message starts with the offending key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"{key}: {problem}")


class DataNotFoundError(MixlabError):
    """A dataset or weight file is missing. The message names the command that fetches it."""


class ArgumentError(MixlabError, ValueError):
    """An invalid argument of a constructor or function, named relative to it (`steps: must be >= 1`).

    Raised by `mixlab.core.validate.checked` and by rules that span several arguments; when the
    object is built from a config, `mixlab.core.config.build` turns it into a ConfigError naming
    the full key (`model.local_search.steps: ...`)."""

    def __init__(self, arg: str, problem: str):
        self.arg, self.problem = arg, problem
        super().__init__(f"{arg}: {problem}")


class DiskError(MixlabError):
    """A file could not be written (disk full, read-only or forbidden directory). The message
    names the path; nothing half-written is left behind."""


class Interrupted(MixlabError):
    """A run stopped by SIGTERM or SIGINT. `exit_code` is 128 + the signal number (143, 130),
    the shell's convention, so a chain of commands (`make demo`) stops too."""

    def __init__(self, message: str, signum: int):
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(message)
