"""Column mapping of a prompt source: a dataset whose columns have other names (`question`, `answer`, ...)
is read through `source.columns`, {our field: its column}; rows are renamed before validation, and a
mapping that names a missing column or maps two fields to one column is refused with the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quark_lightning.config.typed import unknown_keys
from quark_lightning.data.prompt_sources import Rows, listing
from quark_lightning.data.schema import (
    DataValidationError,
    show,
)
from quark_lightning.infra.errors import ConfigError

# our field -> what it holds (the keys of data.columns)
COLUMN_FIELDS = {
    "id": "a unique id per row (an integer column is used as its decimal string)",
    "messages": 'the conversation: a list of {"role", "content"} objects ending with the user turn',
    "prompt": "a plain-text prompt, made into one user message (instead of messages)",
    "reference": "the expert answer",
    "rubric": "the rubric items",
    "red_flags": "the red flags",
    "area": "the clinical area",
}


def column_problems(columns: Any) -> list[str]:
    """What is wrong with a `data.columns` mapping (our field -> the dataset's column; null = our name)."""
    if columns is None:
        return []
    if not isinstance(columns, Mapping):
        return [
            f"data.columns: got {show(columns)}, expected a mapping of our field -> your column, e.g. "
            "data.columns='{prompt: question, reference: answer}'"
        ]
    p = unknown_keys(
        list(columns), COLUMN_FIELDS, "data.columns", " (the fields of docs/design.md section 3)"
    )
    for field, column in columns.items():
        if field in COLUMN_FIELDS and column is not None and not (isinstance(column, str) and column.strip()):
            p.append(
                f"data.columns.{field}: got {show(column)}, expected null or the name of a column "
                f"holding {COLUMN_FIELDS[field]}"
            )
    if columns.get("messages") is not None and columns.get("prompt") is not None:
        p.append(
            "data.columns: both messages and prompt are mapped; a row has one conversation. Fix: map one of "
            "them (prompt: a plain-text column, made into one user message)"
        )
    return p


def mapped(columns: Mapping[str, Any] | None) -> dict[str, str]:
    """The fields `columns` maps to a column of another name (null / same-name entries left out)."""
    problems = column_problems(columns)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    keep = ("id", "prompt")  # id=id still turns an integer id into text; prompt=prompt still makes a message
    return {f: str(c) for f, c in (columns or {}).items() if c is not None and (c != f or f in keep)}


def map_row(row: Any, fields: dict[str, str]) -> tuple[Any, str | None]:
    """(the row with each mapped column under our field name, None) or (row, what is wrong)."""
    if not isinstance(row, dict) or not fields:
        return row, None
    taken = {*fields, *fields.values()}  # a column of our field's name is shadowed by the mapped one
    out = {k: v for k, v in row.items() if k not in taken}
    for field, column in fields.items():
        if column in row:
            out[field] = row[column]
    if "id" in fields and isinstance(out.get("id"), int) and not isinstance(out["id"], bool):
        out["id"] = str(out["id"])
    if "prompt" in fields:
        text = out.pop("prompt", None)
        if not (isinstance(text, str) and text.strip()):
            return row, (
                f"column {fields['prompt']!r} (data.columns.prompt): must be a non-empty string (the prompt "
                f"text), got {show(text)}"
            )
        out["messages"] = [{"role": "user", "content": text}]
    return out, None


def map_columns(parts: list[Rows], columns: Mapping[str, Any] | None, dataset: str) -> list[Rows]:
    """Rename the dataset's columns to our fields (`data.columns`); a mapped column that is in no file or
    split of the dataset, or a prompt that is not text, is a DataValidationError."""
    fields = mapped(columns)
    if not fields:
        return parts
    present = {c for part in parts for c in part.columns}
    errors = [
        f"{dataset}: column {column!r} (data.columns.{field}) not found; its columns are {listing(present)}. "
        f"Fix: set data.columns.{field} to one of them"
        for field, column in fields.items()
        if column not in present
    ]
    if errors:
        raise DataValidationError(errors)
    out = []
    for part in parts:
        rows = []
        for line, row in part.rows:
            new, problem = map_row(row, fields)
            if problem:
                errors.append(f"{part.source}:{line}: {problem}")
            rows.append((line, new))
        out.append(Rows(part.name, rows, part.columns, part.arrow))
    if errors:
        raise DataValidationError(errors)
    return out
