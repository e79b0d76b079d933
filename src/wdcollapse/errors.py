"""Errors that end a run before any work, with a message that says what to do."""


class ConfigError(ValueError):
    """A setting that makes no sense; the message names it, its value and what is allowed."""
