"""Fundamental-capabilities dimension `correctness_verifiable`: exact checking of numeric answers.

Interpretation: a prompt whose `answer` is `{"type": "number", "value": v, "tolerance": t}` is verifiable.
The completion's final numeric answer x is extracted and the sample scores 1.0 when |x - v| <= t, and
0.0 when x is wrong or no number is found. Prompts without a numeric answer get NaN (not applicable):
this dimension says nothing about free-text questions.

Extraction of the final answer, in order of preference:
1. the last `\\boxed{...}` that contains a number;
2. the first number after the last answer cue ("answer is", "answer:", "final answer =", "**Answer:**");
3. the last number in the text.
A number may carry a sign (`-` or the Unicode minus), thousands commas (`1,234.5`), a decimal part
(`.5`) and a unit or `%` after it. Digits inside words or units are not numbers: `CHA2DS2`, `kg/m2`,
`m^2`, `/1.73 m²`, `10^9`.

With `recompute=True`, a prompt that names a `calculator` and stores its `calculator_inputs` (as the
generator in `quark_lightning.data.calculators` writes them) is checked against the value that
medcalc-bench computes from those inputs rather than the stored number, so users' own calculator
prompts are verified by the real calculator. The stored tolerance still applies (or the generator's
rule when none is stored), and a stored value that disagrees is reported as a finding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from quark_lightning.data.calculators import CALCULATORS, CalculatorError, answer_tolerance, run_calculator
from quark_lightning.scorers.interface import ScoreResult

NUMBER = re.compile(r"(?<![\w.,^/])[-\u2212]?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
ANSWER_CUE = re.compile(r"\banswer\b[*_\s]*(?:is\b|was\b|would be\b|will be\b|[:=])", re.IGNORECASE)
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
CUE_WINDOW = 120  # characters after an answer cue searched for its number


def parse_number(token: str) -> float:
    return float(token.replace(",", "").replace("\u2212", "-"))


def numbers_in(text: str) -> list[float]:
    return [parse_number(m.group(0)) for m in NUMBER.finditer(text)]


def extract_final_number(text: str) -> float | None:
    """The completion's final numeric answer (see the module docstring), or None when it has none."""
    for boxed in reversed(BOXED.findall(text)):
        found = numbers_in(boxed)
        if found:
            return found[0]
    cues = list(ANSWER_CUE.finditer(text))
    if cues:
        found = numbers_in(text[cues[-1].end() : cues[-1].end() + CUE_WINDOW])
        if found:
            return found[0]
    found = numbers_in(text)
    return found[-1] if found else None


def _fmt(x: float) -> str:
    return f"{x:g}"


class CalculatorScorer:
    """Scores 1.0 / 0.0 / NaN for a correct / wrong / not-applicable numeric answer."""

    def __init__(self, recompute: bool = False, default_tolerance: float = 0.0):
        self.recompute = recompute
        self.default_tolerance = float(default_tolerance)

    def expected(self, prompt: dict[str, Any]) -> tuple[float, float, list[str]] | None:
        """(value, absolute tolerance, findings) for a verifiable prompt, None when not applicable."""
        answer = prompt.get("answer")
        stored = answer if isinstance(answer, dict) and answer.get("type") == "number" else None
        if self.recompute and prompt.get("calculator") and prompt.get("calculator_inputs") is not None:
            return self._recomputed(prompt, stored)
        if stored is None or not isinstance(stored.get("value"), (int, float)):
            return None
        return float(stored["value"]), float(stored.get("tolerance", self.default_tolerance)), []

    def _recomputed(
        self, prompt: dict[str, Any], stored: dict[str, Any] | None
    ) -> tuple[float, float, list[str]]:
        name = prompt["calculator"]
        try:
            value = float(run_calculator(name, prompt["calculator_inputs"])[0])
        except CalculatorError as err:
            raise CalculatorError(f"prompt {prompt.get('id')!r}: {err}") from err
        if stored is not None and "tolerance" in stored:
            tolerance = float(stored["tolerance"])
        else:
            tolerance = answer_tolerance(value, CALCULATORS[name].resolution if name in CALCULATORS else None)
        findings = []
        if stored is not None and isinstance(stored.get("value"), (int, float)):
            if abs(float(stored["value"]) - value) > tolerance:
                findings.append(
                    f"stored answer {_fmt(stored['value'])} disagrees with medcalc-bench {name} ({_fmt(value)}); "
                    "scored against medcalc-bench"
                )
        return value, tolerance, findings

    def score_one(self, prompt: dict[str, Any], completion: str) -> tuple[float, list[str]]:
        expected = self.expected(prompt)
        if expected is None:
            return math.nan, []
        value, tolerance, findings = expected
        answered = extract_final_number(completion)
        if answered is None:
            return 0.0, [*findings, "no numeric answer found"]
        if abs(answered - value) <= tolerance + 1e-9 * max(1.0, abs(value)):
            return 1.0, findings
        return 0.0, [
            *findings,
            f"answered {_fmt(answered)}, expected {_fmt(value)} (tolerance {_fmt(tolerance)})",
        ]

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        results = [self.score_one(p, c) for p, c in zip(prompts, completions, strict=True)]
        return ScoreResult.from_lists([s for s, _ in results], [f for _, f in results])
