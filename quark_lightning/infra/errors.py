"""User-facing errors. The entry points print their message (no traceback) and exit with status 2
(`quark_lightning.cli.entry.run_or_exit`). This module imports nothing of ours: everything may import it."""


class QuarkError(Exception):
    """Base of every error whose message tells the user what is wrong, where, and how to fix it."""


class ConfigError(QuarkError, ValueError):
    """A configuration value is wrong: the message names the key, what was expected, and the fix."""

