"""The bundled held-out evaluation questions, `assets/eval_questions.jsonl`: judge a trained policy on
questions it never saw.

70 prompt records (docs/design.md section 3.1; DATA_CARD.md "Held-out evaluation questions"), 7 in each of
the 10 clinical areas of `medical_prompts.jsonl`: 35 red-flag questions, whose reference directs the person
to emergency care now, and 35 routine ones, whose reference does not (at most a conditional "If ..."
safety net). Written fresh for this project; none paraphrases a question of the training files.

No training run may use them: every id starts with `EVAL_ID_PREFIX` ("eval-"), and `refuse_evaluation_data`
(data/canary.py), called on every training path, refuses such rows. Evaluate on them with
`python evaluate.py data.path=quark_lightning/data/assets/eval_questions.jsonl limit=null`.
"""

from __future__ import annotations

import os
from typing import Any

from quark_lightning.data import ASSETS
from quark_lightning.data.canary import EVAL_ID_PREFIX
from quark_lightning.data.schema import DataValidationError, location, read_jsonl, validate_records

EVAL_QUESTIONS = ASSETS / "eval_questions.jsonl"


def load_eval_questions(path: str | os.PathLike[str] = EVAL_QUESTIONS) -> list[dict[str, Any]]:
    """The held-out questions, every row validated (each needs a `reference`); every id must start with
    `EVAL_ID_PREFIX`, so that the training paths' guard covers the whole set."""
    source = str(path)
    records = validate_records(read_jsonl(source), source, require_reference=True)
    unmarked = [r for r in records if not r["id"].startswith(EVAL_ID_PREFIX)]
    if unmarked:
        raise DataValidationError(
            [
                f"{location(r)}: field 'id': {r['id']!r} does not start with {EVAL_ID_PREFIX!r}; held-out "
                f"questions need it so that no training path accepts them (data/canary.py). Fix: rename it "
                f"to {EVAL_ID_PREFIX}<area>-<NN>"
                for r in unmarked
            ]
        )
    return records
