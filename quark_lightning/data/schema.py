"""Validation of the prompt format (DESIGN.md section 3).

Every problem is reported as `FILE:LINE: field 'x': what is wrong (how to fix)`, all of a file's
problems at once (up to a limit), before any training starts. Extra keys are allowed and kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from quark_lightning.errors import QuarkError

RUBRIC_TYPES = ("essential", "important", "highlight", "pitfall")
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20


class DataValidationError(QuarkError, ValueError):
    """One or more rows of a data file are malformed; `errors` holds each `FILE:LINE: ...` message."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = errors[:MAX_REPORTED]
        more = f"\n... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        super().__init__(f"{len(errors)} problem(s) in the data:\n" + "\n".join(shown) + more)


def check_messages(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ['field \'messages\': must be a non-empty list of {"role", "content"} objects']
    errs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            errs.append(f"field 'messages[{i}]': must be an object with 'role' and 'content'")
            continue
        if m.get("role") not in ROLES:
            errs.append(
                f"field 'messages[{i}].role': got {m.get('role')!r}, expected one of {', '.join(ROLES)}"
            )
        if not isinstance(m.get("content"), str) or not m.get("content", "").strip():
            errs.append(f"field 'messages[{i}].content': must be a non-empty string")
    if not errs and messages[-1]["role"] != "user":
        errs.append("field 'messages': the last message must be from the 'user' (the turn the model answers)")
    return errs


def _check_rubric(rubric: Any) -> list[str]:
    if not isinstance(rubric, list):
        return ["field 'rubric': must be a list of rubric items"]
    errs, ids = [], set()
    for i, item in enumerate(rubric):
        where = f"field 'rubric[{i}]"
        if not isinstance(item, dict):
            errs.append(f"{where}': must be an object with id, type, text, any")
            continue
        if not isinstance(item.get("id"), str) or not item.get("id"):
            errs.append(f"{where}.id': must be a non-empty string")
        elif item["id"] in ids:
            errs.append(f"{where}.id': {item['id']!r} repeats an earlier item id")
        else:
            ids.add(item["id"])
        if item.get("type") not in RUBRIC_TYPES:
            errs.append(f"{where}.type': got {item.get('type')!r}, expected one of {', '.join(RUBRIC_TYPES)}")
        if not isinstance(item.get("text"), str):
            errs.append(f"{where}.text': must be a string saying what the item checks")
        patterns = item.get("any", [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            errs.append(f"{where}.any': must be a list of regular-expression strings")
        else:
            for j, p in enumerate(patterns):
                try:
                    re.compile(p)
                except re.error as e:
                    errs.append(f"{where}.any[{j}]': invalid regular expression {p!r}: {e}")
        points = item.get("points", 1.0)
        if isinstance(points, bool) or not isinstance(points, (int, float)) or points <= 0:
            errs.append(f"{where}.points': must be a positive number, got {points!r}")
    return errs


def _check_answer(answer: Any) -> list[str]:
    if not isinstance(answer, dict):
        return ['field \'answer\': must be an object like {"type": "number", "value": 2.0, "tolerance": 0.0}']
    errs = []
    if answer.get("type") not in ("number", "text", "choice"):
        errs.append(f"field 'answer.type': got {answer.get('type')!r}, expected number, text or choice")
    if "value" not in answer:
        errs.append("field 'answer.value': missing")
    elif answer.get("type") == "number" and (
        isinstance(answer["value"], bool) or not isinstance(answer["value"], (int, float))
    ):
        errs.append(f"field 'answer.value': a number answer needs a numeric value, got {answer['value']!r}")
    return errs


def validate_prompt(record: Any, require_reference: bool = False) -> list[str]:
    """Problems of one prompt record, each starting with `field '...'`."""
    if not isinstance(record, dict):
        return [f"the row must be a JSON object, got {type(record).__name__}"]
    errs: list[str] = []
    if not isinstance(record.get("id"), str) or not record.get("id"):
        errs.append("field 'id': must be a non-empty string (a unique prompt id such as 'htn-001')")
    if "area" in record and not isinstance(record["area"], str):
        errs.append("field 'area': must be a string naming the clinical area")
    errs += check_messages(record.get("messages"))
    if "reference" in record and record["reference"] is not None and not isinstance(record["reference"], str):
        errs.append("field 'reference': must be a string (the expert answer)")
    if require_reference and not (isinstance(record.get("reference"), str) and record["reference"].strip()):
        errs.append("field 'reference': required here (the supervised warm start trains on it)")
    if "rubric" in record:
        errs += _check_rubric(record["rubric"])
    for key in ("red_flags", "facts"):
        if key in record and not (
            isinstance(record[key], list) and all(isinstance(x, str) for x in record[key])
        ):
            errs.append(f"field '{key}': must be a list of strings")
    if record.get("answer") is not None:
        errs += _check_answer(record["answer"])
    return errs


def validate_records(
    rows: Iterable[tuple[int, Any]], source: str, require_reference: bool = False
) -> list[dict[str, Any]]:
    """Validate (line number, record) pairs; raise DataValidationError listing every bad row."""
    records, errors, seen = [], [], {}
    for line, record in rows:
        problems = validate_prompt(record, require_reference)
        if not problems and record["id"] in seen:
            problems = [
                f"field 'id': {record['id']!r} already used on line {seen[record['id']]}; ids must be unique"
            ]
        errors += [f"{source}:{line}: {p}" for p in problems]
        if not problems:
            seen[record["id"]] = line
            records.append(record)
    if errors:
        raise DataValidationError(errors)
    if not records:
        raise DataValidationError([f"{source}: no prompts found; the file is empty"])
    return records


def read_jsonl(path: str) -> list[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; a JSON syntax error is a reported row error."""
    rows, errors = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                errors.append(f"{path}:{lineno}: invalid JSON at column {e.colno}: {e.msg}")
    if errors:
        raise DataValidationError(errors)
    return rows
