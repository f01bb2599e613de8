"""User-facing errors. The entry points print their message (no traceback) and exit with status 2."""


class QuarkError(Exception):
    """Base of every error whose message tells the user what is wrong, where, and how to fix it."""


class ConfigError(QuarkError, ValueError):
    """A configuration value is wrong: the message names the key, what was expected, and the fix."""


def run_or_exit(function, cfg):
    """Run an entry point's wiring function; a QuarkError prints its message (no traceback) and exits 2."""
    import sys

    try:
        return function(cfg)
    except QuarkError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
