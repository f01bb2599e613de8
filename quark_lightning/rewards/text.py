"""Small text helpers shared by the rule-based scorers."""

from __future__ import annotations

import re
from functools import lru_cache

WORD = re.compile(r"[A-Za-z0-9']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def matches_any(patterns: list[str], text: str) -> bool:
    return any(compile_pattern(p).search(text) for p in patterns)


def repeated_ngram_fraction(tokens: list[str], n: int = 3) -> float:
    """Share of n-grams that repeat an earlier n-gram (0 = no repetition)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
