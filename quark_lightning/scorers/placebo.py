"""A placebo dimension for control arms: a score that carries no information about the answer's quality.

    score(prompt, answer) = int(sha256(prompt id + "\\x00" + answer)[:8], 16) / 16**8      in [0, 1)

Deterministic (the same answer to the same prompt always scores the same) and, over distinct answers,
uniform and unrelated to anything an answer says, its length included. Give it all the weight and zero to
every other dimension (`+experiment=placebo_control`): whatever the policy then learns comes from the
update itself (its size, sampling, the loss's normalization), not from what the rewards pay for. Compare
its held-out table with the real run's to tell the two apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from quark_lightning.scorers.interface import ScoreResult


def placebo_score(prompt_id: str, answer: str) -> float:
    digest = hashlib.sha256(f"{prompt_id}\x00{answer}".encode()).hexdigest()
    return int(digest[:8], 16) / 16**8


class PlaceboScorer:
    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        scores = [placebo_score(str(p.get("id", "")), c) for p, c in zip(prompts, completions)]
        return ScoreResult.from_lists(scores, [[] for _ in completions])
