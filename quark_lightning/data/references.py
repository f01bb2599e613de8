"""Checks of what a data row points at outside its own file: evidence ids and file paths.

- `validate_fact_references(records, matrix)`: every id in a prompt's `facts` must exist in the knowledge
  base of each matrix dimension that scores with one (GARM's `AssertionScorer`, recognised by its
  `by_id` mapping of evidence id -> entry). Run it once the data is loaded and the matrix is built,
  before any model: a typo in a fact id would otherwise only show up as a finding during training.
- `resolve_within(base_dir, reference, where)`: the one way a data row may name a file. The path is
  resolved (symlinks too) and must stay inside `base_dir`; absolute paths and `..` escapes are refused.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from quark_lightning.data.schema import DataValidationError, location, show


def knowledge_bases(matrix: Any) -> dict[str, Mapping[str, Any]]:
    """Dimension name -> {evidence id: entry} for every dimension whose scorer holds a knowledge base."""
    out = {}
    for dim in getattr(matrix, "dimensions", []):
        by_id = getattr(dim.scorer, "by_id", None)
        if isinstance(by_id, Mapping):
            out[dim.name] = by_id
    return out


def _missing_fact(where: str, i: int, fact: str, dimension: str, ids: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(fact, list(ids), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{where}: field 'facts[{i}]': evidence id {show(fact)} is not in the knowledge base of matrix "
        f"dimension '{dimension}' ({len(ids)} entries). Fix: {hint}correct the id, add an entry with this "
        f"id to the file named by matrix.dimensions.{dimension}.scorer.knowledge_base, or remove it from "
        "'facts'"
    )


def check_fact_references(
    records: Sequence[dict[str, Any]], ids: Mapping[str, Any], dimension: str
) -> list[str]:
    """`FILE:LINE: field 'facts[i]': ...` for each fact id of the records missing from `ids`."""
    return [
        _missing_fact(location(record), i, fact, dimension, ids)
        for record in records
        for i, fact in enumerate(record.get("facts") or [])
        if fact not in ids
    ]


def validate_fact_references(records: Sequence[dict[str, Any]], matrix: Any) -> None:
    """Raise DataValidationError naming each prompt line whose `facts` cite an unknown evidence id.

    A matrix without a knowledge-base dimension does not use `facts`, so nothing is checked then."""
    errors = [
        error
        for dimension, ids in knowledge_bases(matrix).items()
        for error in check_fact_references(records, ids, dimension)
    ]
    if errors:
        raise DataValidationError(errors)


def resolve_within(base_dir: str | os.PathLike, reference: Any, where: str) -> Path:
    """The file a data row names, resolved inside `base_dir`; an escape or a missing file is an error.

    `where` is `FILE:LINE: field 'x'` of the reference, so the message says which row to fix."""
    if not isinstance(reference, str) or not reference.strip():
        raise DataValidationError([f"{where}: must be a non-empty relative file path, got {show(reference)}"])
    if "\x00" in reference or os.path.isabs(reference) or reference.startswith("~"):
        raise DataValidationError(
            [f"{where}: {show(reference)} is not a relative path; name the file relative to {base_dir}"]
        )
    base = Path(base_dir).resolve()
    target = (base / reference).resolve()
    if not target.is_relative_to(base):
        raise DataValidationError(
            [f"{where}: {show(reference)} points outside {base}; data may only name files inside it"]
        )
    if not target.is_file():
        raise DataValidationError([f"{where}: {show(reference)} is not a file under {base}"])
    return target
