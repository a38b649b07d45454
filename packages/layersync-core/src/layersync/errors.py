"""Errors that mean "bad input": the CLIs print them as one line and exit 2."""


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it."""


class DataError(ValueError):
    """Unusable data: the message names the file and what was expected."""


class PluginError(ConfigError):
    """A plugin broke its contract (a factory returned the wrong kind of object, ...); the message
    names the plugin, the item and the rule."""
