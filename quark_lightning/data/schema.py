"""Validation of the prompt format (docs/design.md section 3), and the strict JSONL reader every loader uses.

Every problem is reported as `FILE:LINE: field 'x': what is wrong (how to fix)`, all of a file's
problems at once (up to a limit), before any training starts. Extra keys are allowed and kept.

Limits (module constants; generous for real data, they stop absurd input before it reaches a
tokenizer, a regex engine or the GPU):

- a JSONL line: UTF-8 (a leading byte-order mark is accepted), at most `MAX_LINE_BYTES` (16 MiB),
  strict JSON (no NaN / Infinity, no key twice in one object);
- a text field (message content, reference, response, rubric text, evidence text): at most
  `MAX_TEXT_CHARS` (100,000) characters;
- a conversation: at most `MAX_MESSAGES` (100) messages; a rubric: at most `MAX_RUBRIC_ITEMS` (200)
  items, each with at most `MAX_PATTERNS` (50) patterns of at most `MAX_PATTERN_CHARS` (1,000)
  characters, each compiled when the file is read by the engine the scorers use (the `regex` module,
  every match under a time bound; see quark_lightning/infra/text.py); ids at most `MAX_ID_CHARS`
  (200) characters; `facts`, `red_flags` and `tags` at most `MAX_LIST_ITEMS` (100) entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import IO, Any

from quark_lightning.infra.errors import QuarkError
from quark_lightning.infra.text import pattern_problem, register_pattern

RUBRIC_TYPES = ("essential", "important", "highlight", "pitfall")
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_TEXT_CHARS = 100_000
MAX_MESSAGES = 100
MAX_RUBRIC_ITEMS = 200
MAX_PATTERNS = 50
MAX_PATTERN_CHARS = 1_000
MAX_ID_CHARS = 200
MAX_LIST_ITEMS = 100


class DataValidationError(QuarkError, ValueError):
    """One or more rows of a data file are malformed; `errors` holds each `FILE:LINE: ...` message."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        shown = errors[:MAX_REPORTED]
        more = f"\n... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        super().__init__(f"{len(errors)} problem(s) in the data:\n" + "\n".join(shown) + more)


class PromptRecord(dict):
    """A validated prompt: a plain dict that also remembers where it was read (`source`, `line`)."""

    source: str = ""
    line: int = 0


def location(record: dict[str, Any]) -> str:
    """`FILE:LINE` of a record read by `validate_records`; `prompt 'id'` for one built in code."""
    if isinstance(record, PromptRecord) and record.source:
        return f"{record.source}:{record.line}"
    return f"prompt {record.get('id')!r}"


def show(value: Any, limit: int = 60) -> str:
    """repr() of a value for a message, cut short (a bad value may be millions of characters long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text):,} characters)"


# ---------------------------------------------------------------------------------------- field checks


def check_text(value: Any, field: str, what: str = "", required: bool = True) -> list[str]:
    """A (non-empty, when required) string of at most MAX_TEXT_CHARS characters."""
    if not isinstance(value, str) or (required and not value.strip()):
        return [
            f"field '{field}': must be a {'non-empty ' if required else ''}string{what}, got {show(value)}"
        ]
    if len(value) > MAX_TEXT_CHARS:
        return [
            f"field '{field}': {len(value):,} characters, more than the limit of {MAX_TEXT_CHARS:,}; "
            "shorten it (a training prompt or answer is far shorter)"
        ]
    return []


def check_id(value: Any, field: str = "id", example: str = "htn-001") -> list[str]:
    if not isinstance(value, str) or not value.strip():
        return [
            f"field '{field}': must be a non-empty string (a unique id such as {example!r}), got {show(value)}"
        ]
    if len(value) > MAX_ID_CHARS:
        return [
            f"field '{field}': {len(value):,} characters, more than the limit of {MAX_ID_CHARS}; use a short id"
        ]
    return []


def check_count(items: list, field: str, limit: int, fix: str) -> list[str]:
    if len(items) > limit:
        return [f"field '{field}': {len(items):,} entries, more than the limit of {limit:,}; {fix}"]
    return []


def check_string_list(value: Any, field: str, example: str) -> list[str]:
    """A list of at most MAX_LIST_ITEMS non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
        return [f"field '{field}': must be a list of non-empty strings (e.g. {example}), got {show(value)}"]
    return check_count(value, field, MAX_LIST_ITEMS, "keep the list short")


def check_messages(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return [
            'field \'messages\': must be a non-empty list of {"role", "content"} objects, '
            f"got {show(messages)}"
        ]
    if len(messages) > MAX_MESSAGES:
        return check_count(
            messages, "messages", MAX_MESSAGES, "keep only the recent turns of the conversation"
        )
    errs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            errs.append(f"field 'messages[{i}]': must be an object with 'role' and 'content', got {show(m)}")
            continue
        if m.get("role") not in ROLES:
            errs.append(
                f"field 'messages[{i}].role': got {show(m.get('role'))}, expected one of {', '.join(ROLES)}"
            )
        errs += check_text(m.get("content"), f"messages[{i}].content")
    if not errs and messages[-1]["role"] != "user":
        errs.append(
            "field 'messages': the last message must be from the 'user' (the turn the model answers), "
            f"got {messages[-1]['role']!r}; drop the trailing turn or put the answer in 'reference'"
        )
    return errs


def _check_patterns(patterns: Any, field: str) -> list[str]:
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        return [f"field '{field}': must be a list of regular-expression strings, got {show(patterns)}"]
    if len(patterns) > MAX_PATTERNS:
        return check_count(patterns, field, MAX_PATTERNS, "merge them into fewer patterns with |")
    errs = []
    for j, p in enumerate(patterns):
        if len(p) > MAX_PATTERN_CHARS:
            errs.append(
                f"field '{field}[{j}]': {len(p):,} characters, more than the limit of {MAX_PATTERN_CHARS:,}; "
                "split it into several patterns"
            )
            continue
        problem = pattern_problem(p)  # the engine the scorers match with (bounded; infra/text.py)
        if problem:
            errs.append(
                f"field '{field}[{j}]': {problem} "
                r"(escape literal characters such as ( ) [ ] + ? * with a backslash)"
            )
    return errs


def register_record_patterns(record: dict[str, Any], where: str) -> None:
    """Remember `FILE:LINE: field 'rubric[i].any[j]'` of each pattern, so a match that runs past the
    time bound names where the pattern came from."""
    for i, item in enumerate(record.get("rubric") or []):
        for j, pattern in enumerate(item.get("any") or []):
            register_pattern(pattern, f"{where}: field 'rubric[{i}].any[{j}]'")


def _check_rubric_item(item: Any, field: str, ids: set[str]) -> list[str]:
    if not isinstance(item, dict):
        return [f"field '{field}': must be an object with id, type, text, any, got {show(item)}"]
    errs = check_id(item.get("id"), f"{field}.id", "e1")
    if not errs and item["id"] in ids:
        errs.append(
            f"field '{field}.id': {item['id']!r} repeats an earlier item id; give each item its own id"
        )
    elif not errs:
        ids.add(item["id"])
    if item.get("type") not in RUBRIC_TYPES:
        errs.append(
            f"field '{field}.type': got {show(item.get('type'))}, expected one of {', '.join(RUBRIC_TYPES)}"
        )
    errs += check_text(item.get("text"), f"{field}.text", " saying what the item checks", required=False)
    errs += _check_patterns(item.get("any", []), f"{field}.any")
    points = item.get("points", 1.0)
    if isinstance(points, bool) or not isinstance(points, (int, float)) or not 0 < points < float("inf"):
        errs.append(f"field '{field}.points': must be a positive number, got {show(points)}")
    return errs


def _check_rubric(rubric: Any) -> list[str]:
    if not isinstance(rubric, list):
        return [f"field 'rubric': must be a list of rubric items, got {show(rubric)}"]
    if len(rubric) > MAX_RUBRIC_ITEMS:
        return check_count(rubric, "rubric", MAX_RUBRIC_ITEMS, "keep the items that matter most")
    ids: set[str] = set()
    return [e for i, item in enumerate(rubric) for e in _check_rubric_item(item, f"rubric[{i}]", ids)]


def _check_answer(answer: Any) -> list[str]:
    if not isinstance(answer, dict):
        return ['field \'answer\': must be an object like {"type": "number", "value": 2.0, "tolerance": 0.0}']
    errs = []
    if answer.get("type") not in ("number", "text", "choice"):
        errs.append(f"field 'answer.type': got {show(answer.get('type'))}, expected number, text or choice")
    if "value" not in answer:
        errs.append("field 'answer.value': missing")
    elif answer.get("type") == "number" and (
        isinstance(answer["value"], bool) or not isinstance(answer["value"], (int, float))
    ):
        errs.append(
            f"field 'answer.value': a number answer needs a numeric value, got {show(answer['value'])}"
        )
    return errs


def validate_prompt(record: Any, require_reference: bool = False) -> list[str]:
    """Problems of one prompt record, each starting with `field '...'`."""
    if not isinstance(record, dict):
        return [f"the row must be a JSON object, got {type(record).__name__}"]
    errs = check_id(record.get("id"))
    if "area" in record and not isinstance(record["area"], str):
        errs.append("field 'area': must be a string naming the clinical area")
    errs += check_messages(record.get("messages"))
    if record.get("reference") is not None:
        errs += check_text(record["reference"], "reference", " (the expert answer)", required=False)
    if require_reference and not (isinstance(record.get("reference"), str) and record["reference"].strip()):
        errs.append("field 'reference': required here (the supervised warm start trains on it)")
    if "rubric" in record:
        errs += _check_rubric(record["rubric"])
    if "red_flags" in record:
        errs += check_string_list(record["red_flags"], "red_flags", '["crushing chest pain"]')
    if "facts" in record:
        errs += check_string_list(record["facts"], "facts", '["kb-pharm-001"] (knowledge-base ids)')
    if record.get("answer") is not None:
        errs += _check_answer(record["answer"])
    return errs


def validate_records(
    rows: Iterable[tuple[int, Any]], source: str, require_reference: bool = False
) -> list[dict[str, Any]]:
    """Validate (line number, record) pairs; raise DataValidationError listing every bad row.

    The records come back as `PromptRecord`s that remember their `FILE:LINE` (see `location`), so a
    later cross-file check (e.g. `facts` against the knowledge base) can name the line too."""
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
            register_record_patterns(record, f"{source}:{line}")
            located = PromptRecord(record)
            located.source, located.line = source, line
            records.append(located)
    if errors:
        raise DataValidationError(errors)
    if not records:
        raise DataValidationError(
            [f"{source}: no prompts found; the file is empty (write one JSON object a line)"]
        )
    return records


# ---------------------------------------------------------------------------------------- strict JSONL


class _StrictJSONError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _StrictJSONError(f"{name} is not valid JSON; write a number or null")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _StrictJSONError(f"key {show(key)} appears twice in one object; keep one")
        out[key] = value
    return out


def _raw_lines(fh: IO[bytes]) -> Iterator[bytes | None]:
    """Each line's bytes; None for a line longer than MAX_LINE_BYTES (read past in bounded chunks)."""
    while raw := fh.readline(MAX_LINE_BYTES + 1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(MAX_LINE_BYTES + 1)
            yield None
        else:
            yield raw


def parse_line(raw: bytes | None, first: bool = False) -> tuple[Any, str | None]:
    """(object, None) for a good line; (None, "what is wrong (fix)") otherwise; (None, "") if blank."""
    if raw is None:
        return None, f"line longer than {MAX_LINE_BYTES // 2**20} MiB; a row must be far shorter"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, (
            f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line; "
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        )
    if first:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return None, ""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON at column {e.colno}: {e.msg} (each line must be one complete JSON object)"
    except _StrictJSONError as e:
        return None, f"invalid JSON: {e}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"


def read_jsonl(path: str) -> list[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; every line that is not UTF-8 or not one JSON
    value is a reported row error (`FILE:LINE: ...`), all raised together."""
    if os.path.isdir(path):
        raise DataValidationError([f"{path}: is a directory; pass the path of a JSONL file"])
    if not os.path.isfile(path):
        raise DataValidationError([f"{path}: file not found (pass the path of an existing JSONL file)"])
    rows, errors = [], []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(_raw_lines(fh), start=1):
            value, problem = parse_line(raw, first=lineno == 1)
            if problem:
                errors.append(f"{path}:{lineno}: {problem}")
            elif problem is None:
                rows.append((lineno, value))
    if errors:
        raise DataValidationError(errors)
    return rows


def json_object_problem(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object in `path`, None), or (None, what is wrong with the file: unreadable, not UTF-8,
    empty, not valid JSON, not an object). For files a run wrote itself and reads back (a pipeline
    stage's state, a saved calibration): callers turn the problem into their own error with their fix."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        if os.path.getsize(path) == 0:
            return None, "empty (0 bytes)"
        return (
            None,
            f"not valid JSON ({err.msg}: line {err.lineno} column {err.colno}), truncated or overwritten",
        )
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, None
