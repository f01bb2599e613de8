"""What the Hydra entry points share: where the config tree is, a clean exit on a bad override, and
`run_or_exit` (a user error prints its message and exits 2; under --multirun a job records it instead).

`conf_dir()` (config/tree.py): the repository's `conf/`, or the copy a wheel ships in the package.

`exit_on_bad_overrides`: Hydra reports an unknown config group option (`+experiment=nope`) or an unknown
key (`trainer.max_stepz=3`) itself, with its own text and exit status 1, before the task function runs.
The entry points call this first: it composes the config once with the same overrides and, on such an
error, prints `error: ...` with the valid names and exits with status 2, as every other user error does.
Command lines with Hydra flags (`--cfg`, `-m`, `--help`, ...) or sweeps are left to Hydra.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from quark_lightning.cli.sweep import in_multirun, run_sweep_job
from quark_lightning.config.tree import conf_dir
from quark_lightning.infra.errors import QuarkError

__all__ = ["conf_dir", "exit_on_bad_overrides", "override_problem", "run_or_exit"]

def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _unknown_group_option(conf: Path, overrides: Sequence) -> str | None:
    """`unknown experiment 'x'; valid experiment names: ...` for an override naming a missing file."""
    for o in overrides:
        group, value = o.key_or_group, o.value()
        if (
            (conf / group).is_dir()
            and isinstance(value, str)
            and not (conf / group / f"{value}.yaml").is_file()
        ):
            return (
                f"unknown {group} {value!r} (override '{o.input_line}'); valid {group} names: "
                f"{', '.join(_names(conf / group))}"
            )
    return None


def _unknown_key(cfg, key: str) -> str:
    """`unknown config option 'a.b'; valid options under 'a': ...` from the config composed without it."""
    from omegaconf import DictConfig

    node, prefix = cfg, []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            break
        node, prefix = node[part], [*prefix, part]
    where = f"under '{'.'.join(prefix)}'" if prefix else "at the top level"
    valid = ", ".join(sorted(str(k) for k in node.keys())) if isinstance(node, DictConfig) else "(none)"
    return (
        f"unknown config option {key!r}; valid options {where}: {valid}. "
        f"To add a new key on purpose, write +{key}=..."
    )


def override_problem(config_name: str, args: Sequence[str], conf: Path | None = None) -> str | None:
    """None when Hydra can compose `config_name` with these command-line overrides, else the message."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.startswith("-") for a in args):
        return None  # Hydra flags: Hydra's own handling
    conf = conf or conf_dir()
    user = [a for a in args if not a.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(user)
    except OverrideParseException as err:
        return f"could not parse the command-line override(s): {err}"
    if any(o.is_sweep_override() for o in parsed) or any(a.startswith("hydra.mode") for a in args):
        return None  # a sweep (hydra.mode=MULTIRUN): Hydra composes each job itself
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        try:
            compose(config_name=config_name, overrides=user)
            return None
        except MissingConfigException as err:
            return _unknown_group_option(conf, parsed) or str(err).splitlines()[0]
        except (HydraException, OmegaConfBaseException) as err:
            found = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", str(err))
            if not found:
                return " ".join(str(err).split())
            rest = [a for a, o in zip(user, parsed) if o.key_or_group != found.group(1)]
            try:
                cfg = compose(config_name=config_name, overrides=rest)
            except (HydraException, OmegaConfBaseException):
                return " ".join(str(err).split())
            return _unknown_key(cfg, found.group(1))


def exit_on_bad_overrides(config_name: str, args: Sequence[str] | None = None) -> None:
    """Print `error: ...` and exit 2 when the command-line overrides name no valid option or key."""
    problem = override_problem(config_name, sys.argv[1:] if args is None else args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def run_or_exit(function, cfg):
    """Run an entry point's wiring function; a QuarkError prints its message (no traceback) and exits 2.

    Under Hydra's `--multirun` one job's error must not end the sweep (sys.exit would): any exception is
    recorded in the job's `job.json` (read by the sweep's comparison table, cli/sweep.py),
    printed, and the job returns None so that Hydra launches the next one.
    """
    if in_multirun():
        return run_sweep_job(function, cfg)
    try:
        return function(cfg)
    except QuarkError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
