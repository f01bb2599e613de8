"""User-facing errors. The entry points print their message (no traceback) and exit with status 2."""


class QuarkError(Exception):
    """Base of every error whose message tells the user what is wrong, where, and how to fix it."""


class ConfigError(QuarkError, ValueError):
    """A configuration value is wrong: the message names the key, what was expected, and the fix."""


def run_or_exit(function, cfg):
    """Run an entry point's wiring function; a QuarkError prints its message (no traceback) and exits 2.

    Under Hydra's `--multirun` one job's error must not end the sweep (sys.exit would): any exception is
    recorded in the job's `job.json` (read by the sweep's comparison table, quark_lightning/cli/sweep.py),
    printed, and the job returns None so that Hydra launches the next one.
    """
    import sys

    from quark_lightning.cli.sweep import in_multirun, run_sweep_job

    if in_multirun():
        return run_sweep_job(function, cfg)
    try:
        return function(cfg)
    except QuarkError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
