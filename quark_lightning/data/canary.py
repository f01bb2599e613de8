"""Evaluation data is never trained on: rows that carry a benchmark canary, or an evaluation id, are refused
on every training path.

HealthBench marks every row with a `canary` string (kept by the conversion, data/healthbench.py). The
bundled held-out questions (data/eval_questions.py, `assets/eval_questions.jsonl`) have ids that start with
`EVAL_ID_PREFIX` ("eval-"). The GRPO prompts (and so the warm start and the closed loop's probes, which draw
from them), the pipeline's SFT sources and the reward model's preference pairs and feedback all pass through
`refuse_evaluation_data` before anything trains; evaluation (evaluate.py, score.py) does not call it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from quark_lightning.data.schema import DataValidationError, location

CANARY_KEY = "canary"
EVAL_ID_PREFIX = "eval-"  # ids of the bundled held-out questions (data/eval_questions.py)


def _is_eval_id(record: dict[str, Any]) -> bool:
    rid = record.get("id")
    return isinstance(rid, str) and rid.startswith(EVAL_ID_PREFIX)


def refuse_evaluation_data(records: Iterable[dict[str, Any]], what: str) -> None:
    """Stop before training on any row with a canary or an `eval-` id; `what` names the training path
    and its key."""
    records = [r for r in records if isinstance(r, dict)]
    errors = []
    marked = [r for r in records if r.get(CANARY_KEY)]
    if marked:
        first = marked[0]
        errors.append(
            f"{location(first)}: field '{CANARY_KEY}': {str(first[CANARY_KEY])[:80]!r} marks benchmark "
            f"evaluation data (HealthBench); {len(marked)} such row(s) in the {what}. Evaluation data must "
            "never be trained on. Fix: remove those rows, and evaluate on HealthBench with "
            "`python evaluate.py healthbench.source=wheel healthbench.grader=published`"
        )
    held_out = [r for r in records if _is_eval_id(r)]
    if held_out:
        first = held_out[0]
        errors.append(
            f"{location(first)}: field 'id': {str(first['id'])[:80]!r} starts with {EVAL_ID_PREFIX!r}, which "
            f"marks the held-out evaluation questions (quark_lightning/data/assets/eval_questions.jsonl); "
            f"{len(held_out)} such row(s) in the {what}. Evaluation data must never be trained on. Fix: "
            f"remove those rows (give your own training rows ids that do not start with {EVAL_ID_PREFIX!r}), "
            "and evaluate on the held-out questions with "
            "`python evaluate.py data.path=quark_lightning/data/assets/eval_questions.jsonl limit=null`"
        )
    if errors:
        raise DataValidationError(errors)
