"""Small text helpers shared by the rule-based scorers, and the bounded matching of user patterns.

Every regular expression that can come from a file (rubric `any` patterns, format disclaimer patterns,
safety patterns, bad-pattern detectors) is compiled and run here, with the `regex` module rather than
`re`: the syntax and meaning are those of `re` (the module's VERSION0; lookbehinds, which the bundled
pitfall patterns use, work), but each search or substitution runs under a time bound of
`MATCH_TIMEOUT_S` seconds (interpretation of "a bound": Python's `re` cannot be interrupted, and a
thread timeout cannot stop it either because it holds the GIL). A pattern is checked when its file is
loaded (`pattern_problem`, used by data/schema.py and the scorers' constructors); a search that runs
past the bound raises `PatternTimeoutError` naming the pattern and, when known, the FILE:LINE and field
it came from (`register_pattern`). Inside training the matrix's scorer guard turns that into a failed
sample of the dimension, so one catastrophic pattern costs at most the bound per answer and per
pattern, never a stalled run. A linear-time engine (RE2) was considered first; it refuses lookbehinds,
which 270 of the bundled pitfall patterns use, so it is not used.
"""

from __future__ import annotations

import re
from functools import lru_cache

import regex

from quark_lightning.infra.errors import QuarkError

WORD = re.compile(r"[A-Za-z0-9']+")
MATCH_TIMEOUT_S = 1.0  # one search of one pattern in one answer; normal patterns take microseconds
_SOURCES: dict[str, str] = {}  # pattern -> "FILE:LINE: field '...'" where it was first read
_MAX_SOURCES = 100_000


class PatternError(QuarkError, ValueError):
    """A pattern is not a valid regular expression, or it ran past MATCH_TIMEOUT_S on one answer."""


class PatternTimeoutError(PatternError, TimeoutError):
    """One search ran past MATCH_TIMEOUT_S (catastrophic backtracking); the message names the pattern."""


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _show(pattern: str, limit: int = 80) -> str:
    text = repr(pattern)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(pattern):,} characters)"


def register_pattern(pattern: str, where: str) -> None:
    """Remember where a pattern was read (`FILE:LINE: field 'x'`), for a later timeout message."""
    if len(_SOURCES) < _MAX_SOURCES:
        _SOURCES.setdefault(pattern, where)


def where_from(pattern: str) -> str:
    """`FILE:LINE: field 'x': ` of a registered pattern, or '' when it was not read from a file."""
    return f"{_SOURCES[pattern]}: " if pattern in _SOURCES else ""


def pattern_problem(pattern: str) -> str | None:
    """None when the matching engine accepts the pattern (case-insensitive), else what is wrong."""
    try:
        regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)
    except (regex.error, re.error, ValueError, OverflowError, RecursionError) as e:
        return f"invalid regular expression {_show(pattern)}: {e}"
    return None


def check_patterns(patterns: list[str], where: str) -> None:
    """Compile every pattern of a config list now; PatternError naming `where[j]` and the pattern."""
    for j, pattern in enumerate(patterns):
        problem = pattern_problem(pattern) if isinstance(pattern, str) else f"not a string: {pattern!r}"
        if problem:
            raise PatternError(f"{where}[{j}]: {problem}")


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> regex.Pattern:
    """The compiled pattern (case-insensitive); PatternError naming the pattern when it is invalid."""
    problem = pattern_problem(pattern)
    if problem:
        raise PatternError(
            f"{where_from(pattern)}{problem} (escape literal characters such as ( ) [ ] + ? * with a backslash)"
        )
    return regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)


def _timed_out(pattern: str, text: str) -> PatternTimeoutError:
    return PatternTimeoutError(
        f"{where_from(pattern)}the regular expression {_show(pattern)} ran longer than {MATCH_TIMEOUT_S:g} s "
        f"on one answer of {len(text):,} characters (catastrophic backtracking, e.g. nested or overlapping "
        "quantifiers such as (a|aa)+ or (x+)+); rewrite it without them, or make the inner quantifier "
        "possessive (x++) or the group atomic ((?>...))"
    )


def search(pattern: str, text: str) -> regex.Match | None:
    """`pattern.search(text)` under MATCH_TIMEOUT_S; PatternTimeoutError past it."""
    try:
        return compile_pattern(pattern).search(text, timeout=MATCH_TIMEOUT_S)
    except TimeoutError:
        raise _timed_out(pattern, text) from None


def substitute(pattern: str, replacement: str, text: str) -> str:
    """`pattern.sub(replacement, text)` under MATCH_TIMEOUT_S; PatternTimeoutError past it."""
    try:
        return compile_pattern(pattern).sub(replacement, text, timeout=MATCH_TIMEOUT_S)
    except TimeoutError:
        raise _timed_out(pattern, text) from None


def matches_any(patterns: list[str], text: str) -> bool:
    """True when any pattern matches somewhere in `text` (case-insensitive), each under the bound."""
    return any(search(p, text) for p in patterns)


def repeated_ngram_fraction(tokens: list[str], n: int = 3) -> float:
    """Share of n-grams that repeat an earlier n-gram (0 = no repetition)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
