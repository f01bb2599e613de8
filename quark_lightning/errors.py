"""User-facing errors. The entry points print their message (no traceback) and exit with status 2."""


class QuarkError(Exception):
    """Base of every error whose message tells the user what is wrong, where, and how to fix it."""


class ConfigError(QuarkError, ValueError):
    """A configuration value is wrong: the message names the key, what was expected, and the fix."""
