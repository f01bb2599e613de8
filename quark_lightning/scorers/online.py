"""Online-feedback dimension: bad patterns mined from users' dislikes, plus built-in detectors.

Closed loop (paper: *observable metric -> attributable diagnosis -> optimizable reward*): the online log
(`{"id", "messages", "response", "rating": 1 | -1, "tags": [...]}`, docs/design.md section 3) gives the dislike
rate; `mine_bad_patterns` attributes dislikes to word n-grams and tags; `BadPatternScorer` turns the
patterns into a reward.

The log is read by data/feedback.py; the mining (Monroe et al. log-odds over word n-gram document
frequencies) and its CLI are in scorers/pattern_mining.py. This module is the reward: built-in
detectors and `BadPatternScorer`. Its old names (`read_feedback`, `mine_bad_patterns`, `ngram_set`,
`redundant`, `STOPWORDS`, `main`, ...) are re-exported here.

**Reward.** Detected patterns p each carry a weight w_p in [0, 1] (built-in detectors: `weights`; mined
patterns: `mined_weight`) and a tag. Within a tag only the strongest counts (one failure mode is not
punished twice because both a detector and a mined n-gram see it); tags combine as a noisy-OR:

    score = prod_t (1 - max_{p detected, tag(p) = t} w_p)        in [0, 1]; 1 = no bad pattern

It applies to every answer (never NaN). Built-in detectors, after the patterns the online log shows:

- `hedging` (tag hedging): a hedge phrase ("it depends", "everyone is different", "I can't say") in an
  answer that holds no concrete content once hedges and boilerplate are removed (no action verb outside
  referral phrases, no number, dose or time frame), or hedges in two or more sentences making up at
  least `max_hedge_share` of them;
- `boilerplate_refusal` (tag refusal): sentences with refusal or referral boilerplate ("as an AI",
  "I cannot give medical advice", "consult a professional") and nothing concrete besides (so "seek
  medical help immediately" is not boilerplate) make up at least `refusal_share` of the words;
- `verbosity` (tag verbose): more than `max_words` words, or more than `max_repeated_sentence_ratio`
  of the sentences repeat an earlier one;
- `repetition` (tag repetitive): more than `max_repeated_trigram_fraction` of word 3-grams repeat.

Mined patterns come from `patterns` (a JSON file written by the mining CLI), which wins over `feedback`
(a feedback JSONL mined when the scorer is built; "bundled" = data/assets/online_feedback.jsonl;
null = built-in detectors only). A mined n-gram is detected on word boundaries of the tokenized answer.

Loop patterns (closed loop, loop/patterns.py): phrases mined from the policy's own failing held-out
answers, set with `set_loop_patterns`; each one an answer contains is a hit of tag "loop" with weight
`loop_weight` (so several loop phrases cost the weight once), detected like the mined n-grams (the same
n-gram set of the answer, its n raised to the longest loop phrase). With no loop patterns the scores are
those without them.

Findings: `bad pattern 'boilerplate_refusal': "i cannot give medical advice" (tag: boilerplate_refusal)`, for a
mined pattern `bad pattern 'mined': "everyone is different" (tag: hedging, z=2.31)`, and for a loop
pattern `bad pattern 'loop-mined': "just wait and see" (tag: loop, mined at step 40 from 4 failing
held-out answers)`.

CLI: `python -m quark_lightning.scorers.online --input FEEDBACK.jsonl --output patterns.json`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from quark_lightning.data.feedback import BUNDLED_FEEDBACK, read_feedback, resolve_feedback, validate_feedback
from quark_lightning.infra.text import repeated_ngram_fraction, search, substitute, words
from quark_lightning.scorers.interface import ScoreResult
from quark_lightning.scorers.lexicon import STOPWORDS, concreteness, sentences
from quark_lightning.scorers.pattern_mining import (
    MINING_METHOD,
    TOTALS,
    MinedPattern,
    attribute_tag,
    count_ngrams,
    edge_stopwords,
    is_candidate,
    load_patterns,
    log_odds_dirichlet,
    main,
    mine_bad_patterns,
    ngram_set,
    parse_args,
    redundant,
    save_patterns,
)

__all__ = [  # the re-exported names keep their old import path (quark_lightning.scorers.online)
    "BUNDLED_FEEDBACK",
    "MINING_METHOD",
    "STOPWORDS",
    "TOTALS",
    "MinedPattern",
    "attribute_tag",
    "count_ngrams",
    "edge_stopwords",
    "is_candidate",
    "load_patterns",
    "log_odds_dirichlet",
    "main",
    "mine_bad_patterns",
    "ngram_set",
    "parse_args",
    "read_feedback",
    "redundant",
    "resolve_feedback",
    "save_patterns",
    "validate_feedback",
    "BadPatternScorer",
    "DETECTOR_TAGS",
    "DETECTOR_WEIGHTS",
    "HEDGES",
    "REFUSALS",
    "first_match",
    "has_substance",
    "repeated_sentence_ratio",
]

# ---------------------------------------------------------------------------------------------------
# Built-in detectors
# ---------------------------------------------------------------------------------------------------

HEDGES = [
    r"\bit (all |really )?depends\b",
    r"\bevery(one|body| person| case) is different\b",
    r"\bi (can't|cannot|can not|am unable to|'m unable to|am not able to) (really )?"
    r"(say|tell|know|be sure)\b",
    r"\b(it's|it is) (hard|difficult|impossible) to (say|know|tell|predict)\b",
    r"\b(hard|difficult) to say\b",
    r"\bthere('s| is) no (simple|easy|single|one) answer\b",
    r"\bvaries (a lot )?from person to person\b",
    r"\bmay or may not\b",
    r"\bno one can say\b",
]
REFUSALS = [
    r"\bas an ai( language model| assistant)?\b",
    r"\bi('m| am) (just |only )?an? (ai|language model|chatbot|virtual assistant)\b",
    r"\bi('m| am) not a (doctor|medical professional|physician|healthcare professional)\b",
    r"\bi (cannot|can't|can not|am unable to|'m unable to|am not able to|won't) (give|provide|offer)"
    r"( you)?( any)?( specific| personal(ised|ized)?)? (medical|health) advice\b",
    r"\bi (cannot|can't|can not) (diagnose|help with (that|this))\b",
    r"\b(please )?(consult|see|talk to|speak (to|with)) (a|an|your) (doctor|physician|gp|"
    r"(qualified )?(medical |healthcare |health )?(professional|provider))\b",
    r"\bseek (professional|medical) (advice|help|guidance)\b",
    r"\bthis (is not|isn't|does not constitute) medical advice\b",
    r"\bfor (general )?informational purposes only\b",
]
DETECTOR_TAGS = {
    "hedging": "hedging",
    "boilerplate_refusal": "boilerplate_refusal",
    "verbosity": "verbose",
    "repetition": "repetitive",
}
DETECTOR_WEIGHTS = {"hedging": 0.4, "boilerplate_refusal": 0.6, "verbosity": 0.3, "repetition": 0.4}

Detector = Callable[[str], str | None]  # evidence of the pattern in the answer, or None


def first_match(patterns: Sequence[str], text: str) -> str | None:
    for p in patterns:
        if m := search(p, text):
            return m.group(0).lower()
    return None


def has_substance(text: str) -> bool:
    """Concrete content (an action verb outside referrals, a number, dose or time frame) once hedges and
    refusal boilerplate are removed: "seek medical help immediately" has it, "as an AI ..." does not."""
    for p in HEDGES + REFUSALS:
        text = substitute(p, " ", text)
    return concreteness(text).concrete


def repeated_sentence_ratio(text: str) -> float:
    """Share of sentences that repeat an earlier one (compared as lowercased word sequences)."""
    keys = [" ".join(words(s)) for s in sentences(text)]
    keys = [k for k in keys if k]
    return 1.0 - len(set(keys)) / len(keys) if keys else 0.0


# ---------------------------------------------------------------------------------------------------
# Scorer
# ---------------------------------------------------------------------------------------------------


class BadPatternScorer:
    def __init__(
        self,
        patterns: str | None = None,
        feedback: str | None = "bundled",
        detectors: Sequence[str] = tuple(DETECTOR_TAGS),
        weights: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        mined_weight: float = 0.25,
        loop_weight: float = 0.25,
        max_words: int = 250,
        max_repeated_sentence_ratio: float = 0.2,
        max_repeated_trigram_fraction: float = 0.25,
        refusal_share: float = 0.6,
        max_hedge_share: float = 0.5,
        min_count: int = 3,
        top_k: int = 20,
        max_n: int = 3,
        min_z: float = 1.645,
        prior_scale: float = 1.0,
        totals: str = "documents",
    ):
        unknown = set(detectors) - set(DETECTOR_TAGS) | set(weights or {}) - set(DETECTOR_TAGS)
        if unknown:
            raise ValueError(
                f"bad patterns: unknown detector(s) {sorted(unknown)}; available: {sorted(DETECTOR_TAGS)}"
            )
        self.weights = {**DETECTOR_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        if not all(0 <= w <= 1 for w in [*self.weights.values(), mined_weight, loop_weight]):
            raise ValueError("bad patterns: every weight (and mined_weight, loop_weight) must be in [0, 1]")
        self.tags = {**DETECTOR_TAGS, **dict(tags or {})}
        self.mined_weight, self.loop_weight = mined_weight, loop_weight
        self.max_words, self.max_repeated_sentences = max_words, max_repeated_sentence_ratio
        self.max_repeated_trigrams = max_repeated_trigram_fraction
        self.refusal_share, self.max_hedge_share = refusal_share, max_hedge_share
        available: dict[str, Detector] = {
            "hedging": self._hedging,
            "boilerplate_refusal": self._boilerplate_refusal,
            "verbosity": self._verbosity,
            "repetition": self._repetition,
        }
        self.detectors = {name: available[name] for name in detectors}
        if patterns:
            mined = load_patterns(patterns)
        elif feedback:
            mined = mine_bad_patterns(
                read_feedback(feedback),
                min_count=min_count,
                top_k=top_k,
                max_n=max_n,
                min_z=min_z,
                prior_scale=prior_scale,
                totals=totals,
            )
        else:
            mined = []
        self.mined = {p.pattern: p for p in mined}
        self.max_n = max((p.n for p in mined), default=0)
        self.loop_patterns: dict[str, dict] = {}  # phrase -> state of loop/patterns.py (closed loop)
        self.grams_n = self.max_n  # longest n-gram detect() needs: mined and loop patterns

    def set_loop_patterns(self, state: dict[str, dict]) -> None:
        """Phrases the closed loop mined from failing held-out answers (`update_loop_patterns`); each one
        an answer contains is a hit ("loop-mined", phrase, "loop", loop_weight). {} removes them all."""
        self.loop_patterns = {" ".join(words(p)): dict(info) for p, info in state.items() if words(p)}
        self.grams_n = max([self.max_n, *(len(p.split()) for p in self.loop_patterns)])

    # detectors: evidence string or None ----------------------------------------------------------
    def _hedging(self, text: str) -> str | None:
        hedge = first_match(HEDGES, text)
        if hedge is None:
            return None
        hedged = sum(first_match(HEDGES, s) is not None for s in sentences(text))
        if hedged >= 2 and hedged / len(sentences(text)) >= self.max_hedge_share:
            return hedge
        return None if has_substance(text) else hedge

    def _boilerplate_refusal(self, text: str) -> str | None:
        total = len(words(text))
        found = [(s, m) for s in sentences(text) if (m := first_match(REFUSALS, s)) and not has_substance(s)]
        if not total or not found:
            return None
        share = sum(len(words(s)) for s, _ in found) / total
        return found[0][1] if share >= self.refusal_share else None

    def _verbosity(self, text: str) -> str | None:
        n = len(words(text))
        if n > self.max_words:
            return f"{n} words (max {self.max_words})"
        ratio = repeated_sentence_ratio(text)
        if ratio > self.max_repeated_sentences:
            return f"{ratio:.0%} of sentences repeat an earlier one (max {self.max_repeated_sentences:.0%})"
        return None

    def _repetition(self, text: str) -> str | None:
        frac = repeated_ngram_fraction(words(text), 3)
        if frac > self.max_repeated_trigrams:
            return f"{frac:.0%} of word 3-grams repeat (max {self.max_repeated_trigrams:.0%})"
        return None

    # scoring -------------------------------------------------------------------------------------
    def detect(self, text: str) -> list[tuple[str, str, str, float]]:
        """(detector name, evidence, tag, weight) of every bad pattern in one answer."""
        hits = [
            (name, evidence, self.tags[name], self.weights[name])
            for name, detector in self.detectors.items()
            if (evidence := detector(text)) is not None
        ]
        if self.mined or self.loop_patterns:
            grams = ngram_set(words(text), self.grams_n)  # one pass covers both pattern lists
            for gram in sorted(grams & self.mined.keys()):
                hits.append(("mined", gram, self.mined[gram].tag, self.mined_weight))
            for gram in sorted((grams & self.loop_patterns.keys()) - self.mined.keys()):  # never twice
                hits.append(("loop-mined", gram, "loop", self.loop_weight))
        return hits

    def finding(self, name: str, evidence: str, tag: str) -> str:
        extra = ""
        if name == "mined":
            extra = f", z={self.mined[evidence].z:.2f}"
        elif name == "loop-mined":
            info = self.loop_patterns[evidence]
            step, count = info.get("mined_at"), info.get("failing_count")
            extra = f", mined at step {step} from {count} failing held-out answers"
        return f"bad pattern '{name}': \"{evidence}\" (tag: {tag}{extra})"

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        scores, findings = [], []
        for text in completions:
            if not text.strip():  # no answer is the pattern users dislike most: never a clean 1.0
                scores.append(0.0)
                findings.append(["bad pattern 'empty answer': the answer is empty (tag: empty)"])
                continue
            hits = self.detect(text)
            worst: dict[str, float] = {}
            for _, _, tag, weight in hits:
                worst[tag] = max(worst.get(tag, 0.0), weight)
            scores.append(math.prod(1.0 - w for w in worst.values()))
            findings.append([self.finding(name, evidence, tag) for name, evidence, tag, _ in hits])
        return ScoreResult.from_lists(scores, findings)


if __name__ == "__main__":
    sys.exit(main())
