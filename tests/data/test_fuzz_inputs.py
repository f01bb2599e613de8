"""Property-based tests (hypothesis) of the JSONL readers and the schema validators (issue 17).

Property: any byte string written to a file is either accepted or rejected with a DataValidationError
whose every message starts with `FILE:` (a whole-file problem) or `FILE:LINE:` (a row problem); never
another exception (a traceback), never a hang. Inputs are drawn three ways, so the validators past the
JSON parser are reached too: raw bytes; JSON lines of arbitrary JSON values; and valid rows with one
field replaced by an arbitrary JSON value (plus CRLF / blank-line / BOM variations). `deadline=None`:
the machine is shared, so no timing is asserted; `max_examples` keeps each test to seconds.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quark_lightning.cli.score import load_responses
from quark_lightning.data.datamodule import load_prompt_records
from quark_lightning.data.healthbench import load_healthbench
from quark_lightning.data.schema import DataValidationError, read_jsonl, validate_prompt

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOADERS = {"prompts": load_prompt_records, "responses": load_responses, "healthbench": load_healthbench}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
PROMPT = {
    "id": "p-1",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is fever bad?"}],
    "rubric": [{"id": "e1", "type": "essential", "text": "fluids", "any": ["fluids?", "(?<!no )rest"]}],
    "red_flags": ["stiff neck"],
    "response": "Rest and drink fluids.",
}
HEALTHBENCH = {
    "prompt_id": "hb-1",
    "prompt": [{"role": "user", "content": "Is fever bad?"}],
    "rubrics": [{"criterion": "Advises fluids", "points": 5, "tags": ["axis:accuracy"]}],
}


def mutated(template: dict) -> st.SearchStrategy[dict]:
    """The template with one top-level field (or a nested one) replaced by, or added as, any JSON value."""
    keys = st.sampled_from([*template, "extra"])

    def replace(key: str, value, nested: bool) -> dict:
        row = json.loads(json.dumps(template))
        target = row
        if nested and isinstance(row.get(key), list) and row[key] and isinstance(row[key][0], dict):
            target = row[key][0]
            key = next(iter(target))
        target[key] = value
        return row

    return st.builds(replace, keys, JSON, st.booleans())


def as_file(rows: list, crlf: bool, blank_tail: bool, bom: bool) -> bytes:
    text = ("\r\n" if crlf else "\n").join(json.dumps(r, ensure_ascii=False) for r in rows)
    return (b"\xef\xbb\xbf" if bom else b"") + (text + ("\n\n  \n" if blank_tail else "\n")).encode()


def files_of(template: dict) -> st.SearchStrategy[bytes]:
    rows = st.lists(mutated(template) | JSON | st.just(template), min_size=0, max_size=4)
    return st.builds(as_file, rows, st.booleans(), st.booleans(), st.booleans())


def check_loader(loader, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "input.jsonl")
        Path(path).write_bytes(data)
        try:
            loader(path)
        except DataValidationError as err:
            assert err.errors
            for message in err.errors:
                assert message.startswith(f"{path}:"), message
                assert re.match(rf"{re.escape(path)}(:\d+)?: \S", message), message


@pytest.mark.parametrize("name", sorted(LOADERS))
@FUZZ
@given(data=st.binary(max_size=600))
def test_any_bytes_are_accepted_or_rejected_with_file_line(name, data):
    check_loader(LOADERS[name], data)


@pytest.mark.parametrize("name", sorted(LOADERS))
@FUZZ
@given(data=st.lists(JSON, max_size=4).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()))
def test_any_json_lines_are_accepted_or_rejected_with_file_line(name, data):
    check_loader(LOADERS[name], data)


@pytest.mark.parametrize("name", ["prompts", "responses"])
@FUZZ
@given(data=files_of(PROMPT))
def test_mutated_prompt_rows_are_accepted_or_rejected_with_file_line(name, data):
    check_loader(LOADERS[name], data)


@FUZZ
@given(data=files_of(HEALTHBENCH))
def test_mutated_healthbench_rows_are_accepted_or_rejected_with_file_line(data):
    check_loader(load_healthbench, data)


@FUZZ
@given(record=JSON | mutated(PROMPT))
def test_validate_prompt_returns_field_messages_and_never_raises(record):
    problems = validate_prompt(record)
    assert isinstance(problems, list) and all(isinstance(p, str) and p for p in problems)


@FUZZ
@given(data=st.binary(max_size=600))
def test_read_jsonl_numbers_each_row_by_its_line(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.jsonl"
        path.write_bytes(data)
        try:
            rows = read_jsonl(str(path))
        except DataValidationError as err:
            assert all(re.match(rf"{re.escape(str(path))}:\d+: ", m) for m in err.errors), err.errors
            return
        lines = data.split(b"\n")
        for line, _ in rows:
            assert 1 <= line <= len(lines) and lines[line - 1].strip()
