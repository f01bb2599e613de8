"""Format-specification dimension: deterministic rules, each reported as a finding when broken.

Score = share of enabled rules the answer passes, in [0, 1] (interpretation: the paper names the format
category only; we use additive rule checks, as the team's `quarl` reward manager does with `integration:
sum`). Rules: word-count bounds, a clean ending (the answer is not cut off mid-sentence), no repetition
(share of repeated word 3-grams), language (share of ASCII letters among letters, for English output),
structure (no run-on sentence longer than `max_sentence_words`), and disclaimer (where the prompt is
risky, i.e. has red flags or pitfall items, the answer points to a doctor, pharmacist or urgent care).

Opt-in `soft_overlong` (DAPO's soft overlong punishment, arXiv 2503.14476, as a rule with partial
credit): with L the answer's length in words, L_max = `overlong_max_words` and L_cache =
`overlong_cache_words`, the rule's credit is 1 for L <= L_max - L_cache, falls linearly to 0 at L_max
((L_max - L) / L_cache), and is 0 beyond: DAPO's penalty R = credit - 1 in [-1, 0]. DAPO counts tokens;
the scorer sees text, so this counts words (set L_max a little under rollout.max_new_tokens * 0.75).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from quark_lightning.infra.text import check_patterns, matches_any, repeated_ngram_fraction, words
from quark_lightning.scorers.interface import ScoreResult

Rule = Callable[[str], str | None]  # returns None when the rule passes, else the finding
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
DEFAULT_DISCLAIMER = [
    r"\b(doctor|gp|pharmacist|nurse|midwife|clinician|health ?care (provider|professional)|specialist)\b",
    r"\b(emergency|urgent|a&e|999|911|112|ambulance|hospital)\b",
    r"\bmedical (advice|help|attention)\b",
]


class FormatScorer:
    def __init__(
        self,
        min_words: int = 20,
        max_words: int = 200,
        max_repeated_trigram_fraction: float = 0.2,
        min_ascii_letter_fraction: float = 0.95,
        rules: Sequence[str] = (
            "length",
            "clean_ending",
            "no_repetition",
            "language",
            "structure",
            "disclaimer",
        ),
        max_sentence_words: int = 60,
        disclaimer_patterns: Sequence[str] | None = None,
        overlong_max_words: int = 150,
        overlong_cache_words: int = 30,
    ):
        if min_words < 0 or max_words < min_words:
            raise ValueError(f"format rules: need 0 <= min_words <= max_words, got {min_words}, {max_words}")
        self.min_words, self.max_words = min_words, max_words
        self.max_repeat = max_repeated_trigram_fraction
        self.min_ascii = min_ascii_letter_fraction
        self.max_sentence_words = max_sentence_words
        if not 0 < overlong_cache_words <= overlong_max_words:
            raise ValueError(
                "format rules: need 0 < overlong_cache_words <= overlong_max_words, "
                f"got {overlong_cache_words}, {overlong_max_words}"
            )
        self.overlong_max, self.overlong_cache = overlong_max_words, overlong_cache_words
        self.disclaimer = list(disclaimer_patterns or DEFAULT_DISCLAIMER)
        check_patterns(self.disclaimer, "format rules: disclaimer_patterns")
        available: dict[str, Rule] = {
            "length": self._length,
            "clean_ending": self._clean_ending,
            "no_repetition": self._no_repetition,
            "language": self._language,
            "structure": self._structure,
        }
        prompt_rules = {"disclaimer": self._disclaimer}  # rules that also read the prompt
        self.soft_overlong = "soft_overlong" in rules  # partial credit in [0, 1] (overlong_credit)
        unknown = [r for r in rules if r not in available and r not in prompt_rules and r != "soft_overlong"]
        if unknown:
            raise ValueError(f"format rules: unknown rule(s) {unknown}; available: {sorted(available)}")
        self.rules = {name: available[name] for name in rules if name in available}
        self.prompt_rules = {name: prompt_rules[name] for name in rules if name in prompt_rules}
        # per-rule weights inside the score (1 each: the plain share of rules passed); the closed loop
        # raises the weight of rules being broken on held-out answers (set_rule_weights)
        self.rule_weights = dict.fromkeys(
            [*self.rules, *self.prompt_rules, *(["soft_overlong"] * self.soft_overlong)], 1.0
        )

    def set_rule_weights(self, weights: dict[str, float]) -> None:
        """Set some rules' weights (> 0); the others keep theirs. Unknown rule names are refused."""
        unknown = sorted(set(weights) - set(self.rule_weights))
        if unknown:
            raise ValueError(
                f"format rules: no rule(s) {unknown} to weigh; enabled: {sorted(self.rule_weights)}"
            )
        bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise ValueError(f"format rules: weights must be > 0, got {bad}")
        self.rule_weights.update({k: float(v) for k, v in weights.items()})

    @staticmethod
    def rule_of(finding: str) -> str:
        """The rule a finding reports ('length: 7 words, ...' -> 'length')."""
        return finding.split(":", 1)[0]

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

    def _structure(self, text: str) -> str | None:
        sentences = [s for s in SENTENCE_END.split(text.strip()) if s.strip()]
        longest = max((len(words(s)) for s in sentences), default=0)
        if longest > self.max_sentence_words:
            return f"structure: a sentence of {longest} words (max {self.max_sentence_words}); split it up"
        return None

    def _disclaimer(self, prompt: dict[str, Any], text: str) -> str | None:
        """Risky prompts (red flags or medication pitfalls) need a pointer to professional care."""
        risky = bool(prompt.get("red_flags")) or any(
            i.get("type") == "pitfall" for i in prompt.get("rubric") or []
        )
        if risky and not matches_any(self.disclaimer, text):
            return "disclaimer: a risky question, but the answer never points to a doctor, pharmacist or urgent care"
        return None

    def overlong_credit(self, text: str) -> tuple[float, str | None]:
        """DAPO's soft overlong punishment as a credit in [0, 1] (penalty = credit - 1), with its finding."""
        n, hi, cache = len(words(text)), self.overlong_max, self.overlong_cache
        if n <= hi - cache:
            return 1.0, None
        credit = max(0.0, (hi - n) / cache)
        return credit, f"soft_overlong: {n} words, past {hi - cache} (credit {credit:.2f}; 0 from {hi} words)"

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        """Per answer: sum_r w_r * credit_r / sum_r w_r (credit 1 passed, 0 broken, DAPO's ramp for
        soft_overlong); with every weight 1 the share of rules passed."""
        scores, findings = [], []
        w, total = self.rule_weights, sum(self.rule_weights.values())
        for prompt, text in zip(prompts, completions, strict=True):
            broken = [f for rule in self.rules.values() if (f := rule(text)) is not None]
            broken += [f for rule in self.prompt_rules.values() if (f := rule(prompt, text)) is not None]
            passed = total - sum(w[self.rule_of(f)] for f in broken) - w.get("soft_overlong", 0.0)
            if self.soft_overlong:
                credit, finding = self.overlong_credit(text)
                passed += w["soft_overlong"] * credit
                broken += [finding] if finding else []
            scores.append(passed / total)
            findings.append(broken)
        return ScoreResult.from_lists(scores, findings)
