"""Closed loop, bad patterns: phrases mined from the policy's own failing held-out answers.

Interpretation (the paper's *observable metric -> attributable diagnosis -> optimizable reward*, applied
to the online dimension without waiting for users' dislikes): after each held-out evaluation the answers
that fail (the caller decides what failing means, e.g. below a dimension's target) play the part of
disliked responses, and the answers that pass plus the held-out prompts' reference answers play the part
of liked ones. `mine_bad_patterns` (scorers/online.py: Monroe et al. log-odds over word n-gram document
frequencies, rating -1 = failing, +1 = passing or reference) ranks the n-grams over-represented among
failing answers; a phrase is kept when it is in at least `min_count` failing answers, in no reference
answer (a reference phrase is never punished, whatever the policy does with it), not made only of one
reference's vocabulary (its content words, stopwords aside, all in a single reference: "ambulance or
an", "and the emergency" are a weak policy's garbled urgent advice, and punishing them would teach it
to avoid the words triage needs), and it is neither known
already nor redundant with a known or better-ranked phrase (contained in / containing one, or found in
nearly the same failing answers: `redundant` of online.py, Jaccard 0.8). New phrases join best z first
while the list holds fewer than `cap`; `BadPatternScorer.set_loop_patterns` then punishes each with
`loop_weight` (tag "loop").

A phrase stays while the policy keeps producing it: an evaluation in which any held-out answer (failing
or passing) contains it resets its `idle` count; `expiry` evaluations in a row without it remove it, so
a phrase the policy has unlearned stops costing reward (and frees its slot). "Contains" is the scorer's
own test: the phrase is one of the answer's word n-grams, `ngram_set(words(text), n)`.

State (JSON-serializable, for the checkpoint): phrase -> {
    "pattern": str,          the phrase (lowercased words, space-joined)
    "mined_at": int,         step of the evaluation that mined it
    "evidence": list[str],   sorted distinct ids of failing answers containing it, refreshed at every
                             evaluation in which a failing answer contains it (kept otherwise)
    "z": float,              log-odds z-score at mining
    "failing_count": int,    failing answers containing it at mining
    "last_fired": int,       step of the last evaluation in which a held-out answer contained it
    "idle": int,             evaluations in a row (up to now) in which no held-out answer contained it
}
Actions (only for phrases added or expired): {"kind": "mined_pattern", "target": phrase, "value": 1.0
(added) | 0.0 (expired), "evidence": [ids], "reason": text}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quark_lightning.infra.text import words
from quark_lightning.scorers.online import STOPWORDS, mine_bad_patterns, ngram_set, redundant

CONFIG_PREFIX = "callbacks.closed_loop."
DEDUPE_JACCARD = 0.8  # as mine_bad_patterns' default
SHOWN_IDS = 3  # evidence ids printed in a reason before "..."


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{CONFIG_PREFIX}{name}: got {value!r}, expected {expected}")


def validate_loop_settings(cap: int, expiry: int, min_count: int, max_n: int = 3) -> None:
    """ValueError naming `callbacks.closed_loop.<name>` and the fix, for a bad setting."""
    _check("cap", cap, isinstance(cap, int) and cap >= 0, "an integer >= 0 (0 = mine no phrase)")
    _check("expiry", expiry, isinstance(expiry, int) and expiry >= 1, "an integer >= 1 (evaluations)")
    _check("min_count", min_count, isinstance(min_count, int) and min_count >= 1, "an integer >= 1")
    _check("max_n", max_n, isinstance(max_n, int) and max_n >= 1, "an integer >= 1 (longest n-gram)")


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return f"{shown}, ..." if len(ids) > SHOWN_IDS else shown


@dataclass
class _Observed:
    """One evaluation's held-out answers, as the mining needs them."""

    answers: list[tuple[str, str, bool]]  # (prompt id, text, failing?)
    references: list[str]
    grams: list[set[str]]  # per answer: its word n-grams
    failing: list[int]  # answer indices
    passing: list[int]

    @classmethod
    def of(cls, answers, references, n: int) -> _Observed:
        return cls(
            answers,
            references,
            [ngram_set(words(text), n) for _, text, _ in answers],
            [i for i, (_, _, bad) in enumerate(answers) if bad],
            [i for i, (_, _, bad) in enumerate(answers) if not bad],
        )

    def failing_ids(self, phrase: str) -> list[str]:
        return sorted({self.answers[i][0] for i in self.failing if phrase in self.grams[i]})

    def failing_docs(self, phrase: str) -> frozenset[int]:
        return frozenset(i for i in self.failing if phrase in self.grams[i])


def update_loop_patterns(
    current: dict[str, dict],
    step: int,
    answers: list[tuple[str, str, bool]],
    references: list[str],
    *,
    cap: int = 8,
    expiry: int = 2,
    min_count: int = 3,
    max_n: int = 3,
    min_z: float = 1.645,
) -> tuple[dict[str, dict], list[dict]]:
    """The loop patterns after one held-out evaluation, and the actions (added / expired phrases).

    answers: (prompt id, answer text, failing?) of every held-out answer of the evaluation;
    references: the held-out prompts' reference answers (passing text). `current` is not modified.
    """
    validate_loop_settings(cap, expiry, min_count, max_n)
    seen = _Observed.of(answers, references, max([max_n, *(len(p.split()) for p in current)]))
    state, actions = _age_known(current, seen, step, expiry)
    if len(state) >= cap or not seen.failing:
        return state, actions
    return state, actions + _mine_new(state, seen, step, cap, min_count, max_n, min_z)


def _age_known(current: dict[str, dict], seen: _Observed, step: int, expiry: int) -> tuple[dict, list]:
    """Known phrases: kept (idle reset) where an answer shows them, aged otherwise, expired at `expiry`."""
    state: dict[str, dict] = {}
    actions: list[dict] = []
    for phrase, old in current.items():
        entry = dict(old)
        if any(phrase in g for g in seen.grams):
            entry["last_fired"], entry["idle"] = step, 0
            entry["evidence"] = seen.failing_ids(phrase) or list(old.get("evidence", []))
            state[phrase] = entry
            continue
        entry["idle"] = int(old.get("idle", 0)) + 1
        if entry["idle"] < expiry:
            state[phrase] = entry
            continue
        actions.append(
            {
                "kind": "mined_pattern",
                "target": phrase,
                "value": 0.0,
                "evidence": list(entry.get("evidence", [])),
                "reason": (
                    f'bad_patterns: mined "{phrase}" expired: no held-out answer contained it for '
                    f"{entry['idle']} evaluations (mined at step {entry.get('mined_at')}, last seen at step "
                    f"{entry.get('last_fired')}); leaves the pattern list"
                ),
            }
        )
    return state, actions


def _mine_new(state: dict, seen: _Observed, step: int, cap: int, min_count: int, max_n: int, min_z: float):
    """New phrases of the failing answers join `state` (in place), best z first, up to `cap`."""
    in_reference = set().union(*(ngram_set(words(r), max_n) for r in seen.references))
    reference_words = [set(words(r)) for r in seen.references]

    def excluded(phrase: str) -> bool:  # a reference's phrase, or made only of one reference's words
        content = {t for t in phrase.split() if t not in STOPWORDS}
        return phrase in in_reference or any(content <= vocabulary for vocabulary in reference_words)

    records = [{"response": seen.answers[i][1], "rating": -1} for i in seen.failing]
    records += [{"response": seen.answers[i][1], "rating": 1} for i in seen.passing]
    records += [{"response": r, "rating": 1} for r in seen.references]
    # every candidate, best z first; deduplicated below, once reference and known phrases are out
    mined = mine_bad_patterns(
        records, min_count=min_count, top_k=sys.maxsize, max_n=max_n, min_z=min_z, dedupe_jaccard=None
    )
    kept = {p: seen.failing_docs(p) for p in state}  # phrase -> failing answers
    actions = []
    for p in mined:
        if len(state) >= cap:
            break
        docs = seen.failing_docs(p.pattern)
        if excluded(p.pattern) or p.pattern in state or redundant(p.pattern, docs, kept, DEDUPE_JACCARD):
            continue
        kept[p.pattern] = docs
        evidence = seen.failing_ids(p.pattern)
        state[p.pattern] = {
            "pattern": p.pattern,
            "mined_at": step,
            "evidence": evidence,
            "z": p.z,
            "failing_count": p.disliked_count,
            "last_fired": step,
            "idle": 0,
        }
        actions.append(_added(p, evidence, len(seen.failing), len(seen.passing)))
    return actions


def _added(p, evidence: list[str], n_failing: int, n_passing: int) -> dict:
    elsewhere = (
        "absent from passing answers and references"
        if p.liked_count == 0
        else f"also in {p.liked_count} of {n_passing} passing answers, in no reference"
    )
    return {
        "kind": "mined_pattern",
        "target": p.pattern,
        "value": 1.0,
        "evidence": evidence,
        "reason": (
            f'bad_patterns: mined "{p.pattern}" from {p.disliked_count} of {n_failing} failing '
            f"held-out answers ({_ids(evidence)}), {elsewhere} (z={p.z:.2f}); joins the pattern list"
        ),
    }
