"""Reading back the JSON files pipeline stages wrote (stage.json, summary.json, evaluation reports).

Its own module (like context.py) so that the runner, the stage kinds and the export all use it without
importing each other. A truncated, empty or garbage file is a `StageFileError` (exit 2) naming the file
and the fix, never a traceback from `json`.
"""

from __future__ import annotations

from typing import Any

from quark_lightning.data.schema import json_object_problem
from quark_lightning.infra.errors import QuarkError


class StageFileError(QuarkError, RuntimeError):
    """A file a pipeline stage wrote (stage.json, summary.json, an evaluation report) is damaged."""


def damaged_file(path: str, problem: str, fix: str) -> StageFileError:
    return StageFileError(f"{path} is damaged: {problem}. Fix: {fix}")


def read_json(path: str, fix: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object a stage wrote to `path`; a truncated, empty or garbage file (or one that is not an
    object with `keys`) is a StageFileError that names it, with `fix` (the sentence that says what to do)."""
    value, problem = json_object_problem(path)
    if problem is not None:
        raise damaged_file(path, problem, fix)
    missing = [k for k in keys if k not in value]
    if missing:
        raise damaged_file(path, f"it has no {', '.join(missing)}", fix)
    return value
