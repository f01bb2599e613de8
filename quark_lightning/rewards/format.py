"""Format-specification dimension: deterministic rules, each reported as a finding when broken.

Score = share of enabled rules the answer passes, in [0, 1] (interpretation: the paper names the format
category only; we use additive rule checks, as the team's `quarl` reward manager does with `integration:
sum`). Rules: word-count bounds, a clean ending (the answer is not cut off mid-sentence), no repetition
(share of repeated word 3-grams), language (share of ASCII letters among letters, for English output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from quark_lightning.rewards.base import ScoreResult
from quark_lightning.rewards.text import repeated_ngram_fraction, words

Rule = Callable[[str], str | None]  # returns None when the rule passes, else the finding


class FormatScorer:
    def __init__(
        self,
        min_words: int = 20,
        max_words: int = 200,
        max_repeated_trigram_fraction: float = 0.2,
        min_ascii_letter_fraction: float = 0.95,
        rules: Sequence[str] = ("length", "clean_ending", "no_repetition", "language"),
    ):
        if min_words < 0 or max_words < min_words:
            raise ValueError(f"format rules: need 0 <= min_words <= max_words, got {min_words}, {max_words}")
        self.min_words, self.max_words = min_words, max_words
        self.max_repeat = max_repeated_trigram_fraction
        self.min_ascii = min_ascii_letter_fraction
        available: dict[str, Rule] = {
            "length": self._length,
            "clean_ending": self._clean_ending,
            "no_repetition": self._no_repetition,
            "language": self._language,
        }
        unknown = [r for r in rules if r not in available]
        if unknown:
            raise ValueError(f"format rules: unknown rule(s) {unknown}; available: {sorted(available)}")
        self.rules = {name: available[name] for name in rules}

    def _length(self, text: str) -> str | None:
        n = len(words(text))
        if n < self.min_words:
            return f"length: {n} words, below the minimum of {self.min_words}"
        if n > self.max_words:
            return f"length: {n} words, above the maximum of {self.max_words}"
        return None

    @staticmethod
    def _clean_ending(text: str) -> str | None:
        stripped = text.rstrip()
        if not stripped or stripped[-1] not in ".!?)\"'":
            return "clean_ending: the answer stops mid-sentence (no final punctuation)"
        return None

    def _no_repetition(self, text: str) -> str | None:
        frac = repeated_ngram_fraction(words(text), 3)
        if frac > self.max_repeat:
            return f"no_repetition: {frac:.0%} of word 3-grams repeat (max {self.max_repeat:.0%})"
        return None

    def _language(self, text: str) -> str | None:
        letters = [c for c in text if c.isalpha()]
        if not letters:
            return "language: the answer has no letters"
        ascii_share = sum(c.isascii() for c in letters) / len(letters)
        if ascii_share < self.min_ascii:
            return f"language: only {ascii_share:.0%} of letters are English (ASCII) letters"
        return None

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        scores, findings = [], []
        for text in completions:
            broken = [f for rule in self.rules.values() if (f := rule(text)) is not None]
            scores.append(1.0 - len(broken) / len(self.rules))
            findings.append(broken)
        return ScoreResult.from_lists(scores, findings)
