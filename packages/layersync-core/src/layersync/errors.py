"""Errors that mean "bad input": the CLIs print them as one line and exit 2."""


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it."""


class DataError(ValueError):
    """Unusable data: the message names the file and what was expected."""


class PluginError(ConfigError):
    """A plugin broke its contract (a factory returned the wrong kind of object, ...); the message
    names the plugin, the item and the rule."""


class NonFiniteError(RuntimeError):
    """Training or sampling produced NaN or inf; the CLIs print it as one line and exit 3."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal between steps; ``signum`` says which (the CLIs exit 128 + signum:
    130 for SIGINT, 143 for SIGTERM, so a scheduler sees a pre-emption)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class WriteError(ConfigError):
    """An output could not be written (a full disk, a read-only folder, ...): the message names
    the file and the system's reason, e.g. ``cannot write run/checkpoints/step_0001000.pt: no
    space left on device``."""

    def __init__(self, path, exc: OSError):
        super().__init__(f"cannot write {path}: {reason(exc)}")
        self.path, self.errno = path, exc.errno


def reason(exc: OSError) -> str:
    """The system's reason for an OSError, as a phrase: 'no space left on device'."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
