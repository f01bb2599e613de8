"""The scorer interface shared by every matrix dimension."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class ScoreResult:
    scores: torch.Tensor  # (N,) float32, NaN = the dimension does not apply to that sample
    findings: list[list[str]]  # (N,) lists of human-readable reasons behind each score
    # sample index -> why it could not be scored (e.g. its judge request timed out). The matrix's guard
    # counts these as failures of the dimension (failures/<dim>) under its on_failure policy.
    failures: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_lists(
        cls, scores: Sequence[float], findings: Sequence[list[str]], failures: dict[int, str] | None = None
    ) -> ScoreResult:
        return cls(
            torch.tensor(list(scores), dtype=torch.float32), [list(f) for f in findings], dict(failures or {})
        )


class Scorer(Protocol):
    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult: ...
