"""Errors that end a run, or a call, before any work, with a message that says what to do."""


class ConfigError(ValueError):
    """A setting that makes no sense; the message names it, its value and what is allowed."""


class ArgumentError(ConfigError, TypeError):
    """A Python-API argument that makes no sense (a wrong type or value, an unknown name): one line
    naming the call, the argument, the value and what is allowed. Both a ValueError and a TypeError,
    so code that catches either keeps working."""
