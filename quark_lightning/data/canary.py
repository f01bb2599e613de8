"""Evaluation data is never trained on: rows that carry a benchmark canary are refused on every training path.

HealthBench marks every row with a `canary` string (kept by the conversion, data/healthbench.py). The GRPO
prompts (and so the warm start and the closed loop's probes, which draw from them), the pipeline's SFT
sources and the reward model's preference pairs and feedback all pass through `refuse_evaluation_data`
before anything trains; evaluation (evaluate.py, score.py) does not call it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from quark_lightning.data.schema import DataValidationError, location

CANARY_KEY = "canary"


def refuse_evaluation_data(records: Iterable[dict[str, Any]], what: str) -> None:
    """Stop before training on any row with a canary; `what` names the training path and its key."""
    bad = [r for r in records if isinstance(r, dict) and r.get(CANARY_KEY)]
    if bad:
        first = bad[0]
        raise DataValidationError(
            [
                f"{location(first)}: field '{CANARY_KEY}': {str(first[CANARY_KEY])[:80]!r} marks benchmark "
                f"evaluation data (HealthBench); {len(bad)} such row(s) in the {what}. Evaluation data must "
                "never be trained on. Fix: remove those rows, and evaluate on HealthBench with "
                "`python evaluate.py healthbench.source=wheel healthbench.grader=published`"
            ]
        )
