"""HealthBench-format data (OpenAI, arXiv 2505.08775): local loading and conversion.

Nothing is downloaded: users who hold a copy of HealthBench, or data written in its format, pass a local
JSONL path. One row::

    {"prompt_id": "...", "prompt": [{"role": "user", "content": "..."}, ...],
     "rubrics": [{"criterion": "...", "points": 5, "tags": ["axis:accuracy", ...]}, ...],
     "example_tags": ["theme:emergency_referrals", ...], "ideal_completions_data": null}

Conversion to our prompt format (docs/design.md section 3), our interpretation:

- `id` = `prompt_id`; `messages` = `prompt`; `area` = the value of the first `theme:` example tag, else
  `"general"`; `example_tags` kept; `reference` = `ideal_completions_data.ideal_completion` when given;
  other extra keys of the row are passed through as metadata.
- every criterion becomes one rubric item `c<k>` (k from 1): a criterion with positive points becomes a
  bonus item (`important`), one with negative points a `pitfall`; `points` = |points|, `hb_points` = the
  original signed points, `axis` = the value of its `axis:` tag (else `"unspecified"`), `tags` kept.
  HealthBench has no notion of an essential item, so no `essential` items are produced; `any` is empty
  (HealthBench criteria are judged by a grader, not by patterns).

The HealthBench score and `HealthBenchScorer` are in scorers/healthbench_score.py (next to the grader,
scorers/healthbench_grader.py); the criterion helpers both sides read (axis, signed points) are here.

CLI: `python -m quark_lightning.data.healthbench --input FILE --output prompts.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from quark_lightning.data.schema import DataValidationError, check_messages, read_jsonl, validate_prompt

__all__ = [
    "CONVERTED_KEYS",
    "convert_criterion",
    "convert_row",
    "load_healthbench",
    "main",
    "validate_healthbench_row",
    "UNSPECIFIED_AXIS",
    "criterion_axis",
    "signed_points",
    "tag_values",
]

UNSPECIFIED_AXIS = "unspecified"


def tag_values(tags: Sequence[str], prefix: str) -> list[str]:
    return [t[len(prefix) :] for t in tags if t.startswith(prefix)]


def signed_points(item: dict[str, Any]) -> float:
    """The HealthBench (signed) points of a criterion, original (`points`) or converted (`hb_points`)."""
    return float(item["hb_points"]) if "hb_points" in item else float(item["points"])


def criterion_axis(item: dict[str, Any]) -> str:
    if isinstance(item.get("axis"), str):
        return item["axis"]
    axes = tag_values(item.get("tags", []), "axis:")
    return axes[0] if axes else UNSPECIFIED_AXIS


CONVERTED_KEYS = ("prompt_id", "prompt", "rubrics", "example_tags", "ideal_completions_data")


# ----------------------------------------------------------------------------------------- validation


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _check_criterion(i: int, item: Any) -> list[str]:
    where = f"field 'rubrics[{i}]"
    if not isinstance(item, dict):
        return [f"{where}': must be an object with 'criterion', 'points' and 'tags'"]
    errs = []
    if not isinstance(item.get("criterion"), str) or not item["criterion"].strip():
        errs.append(f"{where}.criterion': must be a non-empty string saying what is checked")
    points = item.get("points")
    if isinstance(points, bool) or not isinstance(points, (int, float)) or points == 0 or math.isnan(points):
        errs.append(
            f"{where}.points': must be a non-zero number (negative for undesirable behaviour), got {points!r}"
        )
    tags = item.get("tags", [])
    if not _is_str_list(tags):
        errs.append(f"{where}.tags': must be a list of strings such as 'axis:accuracy'")
    elif len(tag_values(tags, "axis:")) > 1:
        errs.append(
            f"{where}.tags': {tag_values(tags, 'axis:')} gives more than one axis; keep one 'axis:' tag"
        )
    return errs


def _check_rubrics(rubrics: Any) -> list[str]:
    if not isinstance(rubrics, list) or not rubrics:
        return ['field \'rubrics\': must be a non-empty list of {"criterion", "points", "tags"} objects']
    errs = [e for i, item in enumerate(rubrics) for e in _check_criterion(i, item)]
    if not errs and not any(item["points"] > 0 for item in rubrics):
        errs.append(
            "field 'rubrics': needs at least one criterion with positive points (the score's denominator)"
        )
    return errs


def _check_ideal(ideal: Any) -> list[str]:
    if ideal is None:
        return []
    if not isinstance(ideal, dict):
        return ["field 'ideal_completions_data': must be null or an object with 'ideal_completion'"]
    if "ideal_completion" in ideal and not isinstance(ideal["ideal_completion"], str):
        return ["field 'ideal_completions_data.ideal_completion': must be a string"]
    return []


def validate_healthbench_row(row: Any) -> list[str]:
    """Problems of one HealthBench row, each starting with `field '...'`."""
    if not isinstance(row, dict):
        return [f"the row must be a JSON object, got {type(row).__name__}"]
    errs = []
    if not isinstance(row.get("prompt_id"), str) or not row["prompt_id"].strip():
        errs.append("field 'prompt_id': must be a non-empty string (the conversation's unique id)")
    errs += [e.replace("field 'messages", "field 'prompt") for e in check_messages(row.get("prompt"))]
    errs += _check_rubrics(row.get("rubrics"))
    if not _is_str_list(row.get("example_tags", [])):
        errs.append("field 'example_tags': must be a list of strings such as 'theme:global_health'")
    errs += _check_ideal(row.get("ideal_completions_data"))
    return errs


# ----------------------------------------------------------------------------------------- conversion


def convert_criterion(k: int, item: dict[str, Any]) -> dict[str, Any]:
    """HealthBench criterion -> our rubric item `c<k>` (positive -> important, negative -> pitfall)."""
    tags = list(item.get("tags", []))
    axes = tag_values(tags, "axis:")
    points = item["points"]
    return {
        "id": f"c{k}",
        "type": "important" if points > 0 else "pitfall",
        "text": item["criterion"],
        "any": [],
        "points": float(abs(points)),
        "axis": axes[0] if axes else UNSPECIFIED_AXIS,
        "hb_points": points,
        "tags": tags,
    }


def convert_row(row: dict[str, Any]) -> dict[str, Any]:
    """A validated HealthBench row -> a prompt record in our format."""
    example_tags = list(row.get("example_tags", []))
    themes = tag_values(example_tags, "theme:")
    record: dict[str, Any] = {k: v for k, v in row.items() if k not in CONVERTED_KEYS}
    record.update(
        id=row["prompt_id"],
        area=themes[0] if themes else "general",
        messages=row["prompt"],
        rubric=[convert_criterion(k, item) for k, item in enumerate(row["rubrics"], start=1)],
        example_tags=example_tags,
    )
    ideal = row.get("ideal_completions_data") or {}
    if isinstance(ideal.get("ideal_completion"), str) and ideal["ideal_completion"].strip():
        record["reference"] = ideal["ideal_completion"]
    return record


def load_healthbench(path: str) -> list[dict[str, Any]]:
    """Validate a local HealthBench-format JSONL file and convert it; raise DataValidationError on any problem."""
    try:
        rows = read_jsonl(path)
    except FileNotFoundError:
        raise DataValidationError(
            [f"{path}: file not found (give a local HealthBench-format JSONL file)"]
        ) from None
    records, errors, seen = [], [], {}
    for line, row in rows:
        problems = validate_healthbench_row(row)
        if not problems and row["prompt_id"] in seen:
            problems = [
                f"field 'prompt_id': {row['prompt_id']!r} already used on line {seen[row['prompt_id']]}"
            ]
        if not problems:
            record = convert_row(row)
            problems = validate_prompt(record)  # the converted record must be a valid prompt too
            if not problems:
                seen[row["prompt_id"]] = line
                records.append(record)
        errors += [f"{path}:{line}: {p}" for p in problems]
    if errors:
        raise DataValidationError(errors)
    if not records:
        raise DataValidationError([f"{path}: no HealthBench rows found; the file is empty"])
    return records


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quark_lightning.data.healthbench",
        description="Convert a local HealthBench-format JSONL file to quark-lightning prompts (JSONL).",
    )
    parser.add_argument("--input", required=True, help="local HealthBench-format JSONL file")
    parser.add_argument("--output", default=None, help="JSONL file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        records = load_healthbench(args.input)
    except DataValidationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(lines)
        print(f"wrote {len(records)} prompts to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
