"""The online-feedback log: users' like / dislike of deployed answers, read and validated for mining.

One record a line (JSONL, docs/design.md section 3)::

    {"id": "fb-001", "messages": [...], "response": "...", "rating": 1 | -1, "tags": ["verbose", ...]}

`read_feedback` reports every bad row as `FILE:LINE: field ...` at once (DataValidationError) and needs
both liked and disliked responses (mining contrasts them). "bundled" names
data/assets/online_feedback.jsonl. The mining itself is in scorers/pattern_mining.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quark_lightning.data import ASSETS
from quark_lightning.data.schema import DataValidationError, check_messages, read_jsonl

BUNDLED_FEEDBACK = ASSETS / "online_feedback.jsonl"


def resolve_feedback(path: str) -> str:
    """`bundled` names the bundled online-feedback log; anything else is used as given."""
    return str(BUNDLED_FEEDBACK) if path in ("bundled", "") else path


def validate_feedback(record: Any) -> list[str]:
    """Problems of one online-feedback record, each starting with `field '...'`."""
    if not isinstance(record, dict):
        return [f"the row must be a JSON object, got {type(record).__name__}"]
    errs = check_messages(record.get("messages"))
    if not isinstance(record.get("response"), str) or not record["response"].strip():
        errs.append("field 'response': must be a non-empty string (the answer users rated)")
    rating = record.get("rating")
    if isinstance(rating, bool) or rating not in (1, -1):
        errs.append(f"field 'rating': got {rating!r}, expected 1 (liked) or -1 (disliked)")
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        errs.append('field \'tags\': must be a list of non-empty strings (e.g. ["verbose", "hedging"])')
    return errs


def read_feedback(path: str) -> list[dict[str, Any]]:
    """Validated feedback records; every bad row is reported as `FILE:LINE: field ...`."""
    path = resolve_feedback(path)
    if not Path(path).is_file():
        raise DataValidationError(
            [f"{path}: online feedback file not found (pass an existing JSONL file, or feedback=null)"]
        )
    records, errors = [], []
    for line, record in read_jsonl(path):
        problems = validate_feedback(record)
        errors += [f"{path}:{line}: {p}" for p in problems]
        if not problems:
            records.append(record)
    if errors:
        raise DataValidationError(errors)
    if not any(r["rating"] == -1 for r in records) or not any(r["rating"] == 1 for r in records):
        raise DataValidationError([f"{path}: mining needs both liked (1) and disliked (-1) responses"])
    return records
