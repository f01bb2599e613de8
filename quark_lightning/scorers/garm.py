"""Fundamental capability, fine grain: `correctness_atomic`, the generative assertion reward (GARM).

Pipeline per answer (the paper as far as it is public, docs/paper-interpretation.md#garm: "split the
response into atomic assertions, retrieve authoritative evidence, then judge"):

    answer -> atomic assertions (scorers/assertions.py)
           -> evidence: top-k knowledge-base entries per assertion (scorers/retrieval.py), plus the
              entries listed in the prompt's `facts`, always
           -> verdict per assertion: supported | refuted | not_enough_info
           -> score

Interpretation (the paper publishes no GARM formula):
- aggregate "zero_tolerance" (default): score = -1 if any assertion is refuted, else 0. This mirrors the
  sibling team's MARCH fact-check reward, whose default is `use_ztr=True`: `-1 if fault_num > 0 else 0`;
- aggregate "error_rate": score = -n_refuted / max(1, n_supported + n_refuted), the share of checked
  assertions that the evidence refutes (assertions without enough information are not counted);
- an answer with no checkable assertion scores 0.0 (nothing wrong was found); the score is NaN only when
  the knowledge base is empty (the dimension cannot apply).

Verifiers:
- "rules" (deterministic default) reads the evidence entries' structured claims. A claim is relevant to
  an assertion that names its entity (or an alias) and one of its keywords. Quantity claims compare the
  assertion's numbers in the claim's canonical unit (mg == g / 1000, weeks == 7 days, F -> C; a
  blood-pressure reading compares its systolic number). Of the assertion's numbers in that unit, those
  nearest to a mention of the claim's keywords are compared: each must lie in the allowed
  interval (max: <= value, min: >= value, eq: value +/- tolerance, range: [value, value_high]; the
  tolerance widens all four), else the assertion is refuted. An assertion that denies (negated, "never
  take 8 g", or warning, "8 g a day can cause liver damage") is supported when the value it denies
  lies outside the interval and gets no verdict otherwise. Polarity claims compare affirm/deny with
  the claim's polarity; hedged clauses get none. Negation and warning combine by OR, so "8 g is not
  dangerous" gets no verdict: the rules err towards not refuting, since a false refutation punishes
  a correct answer.
  Any refuting claim wins over supporting ones; no relevant claim -> not_enough_info.
- "llm" asks the run's LLM judge (the `judge` config group: an in-process HF causal LM or any
  OpenAI-compatible server) for one word, SUPPORTED / REFUTED / NOT_ENOUGH_INFO, given the assertion and
  the evidence texts; greedy. A reply with none of those words, or no reply (timeout, server error),
  makes the answer a failed sample of the dimension (counted by the guard), not a silent verdict.

Findings (the "attributable diagnosis"): one line per refuted assertion naming the evidence id and why,
and a summary `checked 3 assertions: 2 supported, 1 refuted, 4 not enough information`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import torch

from quark_lightning.infra.errors import ConfigError
from quark_lightning.judges import build_judge
from quark_lightning.scorers.assertions import Assertion, Quantity, split_assertions
from quark_lightning.scorers.interface import ScoreResult
from quark_lightning.scorers.retrieval import Claim, EvidenceEntry, build_retriever, load_knowledge_base

SUPPORTED, REFUTED, NOT_ENOUGH_INFO = "supported", "refuted", "not_enough_info"
VERDICTS = (SUPPORTED, REFUTED, NOT_ENOUGH_INFO)
_EPS = 1e-9


@dataclass(frozen=True)
class Judgement:
    assertion: Assertion
    verdict: str  # one of VERDICTS
    evidence_id: str | None = None  # the entry that decided the verdict
    claim: Claim | None = None  # the claim that decided it (rule verifier)
    reason: str = ""
    error: str | None = None  # the judge gave no verdict (the answer is then a failed sample)


class Verifier(Protocol):
    def verify_many(self, items: Sequence[tuple[Assertion, list[EvidenceEntry]]]) -> list[Judgement]: ...


# ------------------------------------------------------------------------------------------ rule verifier


@lru_cache(maxsize=8192)
def _mention(terms: tuple[str, ...]) -> re.Pattern[str]:
    """Any of `terms` as whole words, an English plural ending allowed."""
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?:s|es)?(?![a-z0-9])")


def is_relevant(claim: Claim, assertion: Assertion) -> bool:
    return bool(
        _mention(claim.names).search(assertion.lower) and _mention(claim.keywords).search(assertion.lower)
    )


def denies(assertion: Assertion) -> bool:
    """Negated ("do not give aspirin") or warning ("aspirin can cause Reye's syndrome in children")."""
    return assertion.negated or assertion.warns


def nearest_to_keywords(claim: Claim, assertion: Assertion, quantities: list[Quantity]) -> list[Quantity]:
    """The quantities closest to a mention of the claim's keywords: "150 minutes of moderate activity a
    week, or 75 minutes of vigorous activity" compares the number next to "moderate" or "week"."""
    spans = [m.span() for m in _mention(claim.keywords).finditer(assertion.lower)]
    if not quantities or not spans:
        return []
    gaps = [min(max(0, a - q.end, q.start - b) for a, b in spans) for q in quantities]
    return [q for q, gap in zip(quantities, gaps) if gap == min(gaps)]


def check_quantity(claim: Claim, assertion: Assertion, entry_id: str) -> Judgement | None:
    assert claim.quantity is not None
    low, high, unit = claim.quantity.interval()
    stated = nearest_to_keywords(claim, assertion, [q for q in assertion.quantities if q.unit == unit])
    if not stated:
        return None
    slack = _EPS * max(1.0, *(abs(x) for x in (low, high) if math.isfinite(x)))  # float round-off
    outside = [q for q in stated if q.value < low - slack or q.high > high + slack]
    evidence = f"evidence {claim.quantity.describe()}"
    if denies(assertion):  # "never take 8 g": denying a value the evidence also rules out agrees with it
        if not outside:
            return None
        return Judgement(assertion, SUPPORTED, entry_id, claim, f"denies {outside[0].raw}, {evidence}")
    if outside:
        return Judgement(assertion, REFUTED, entry_id, claim, f"states {outside[0].raw}, {evidence}")
    return Judgement(assertion, SUPPORTED, entry_id, claim, f"states {stated[0].raw}, {evidence}")


def check_polarity(claim: Claim, assertion: Assertion, entry_id: str) -> Judgement | None:
    if assertion.hedged:
        return None
    affirmed = not denies(assertion)
    said = f"{'affirms' if affirmed else 'denies'} '{claim.entity}: {claim.attribute}'"
    if affirmed == claim.polarity:
        return Judgement(assertion, SUPPORTED, entry_id, claim, f"{said}, evidence agrees")
    truth = "true" if claim.polarity else "false"
    return Judgement(assertion, REFUTED, entry_id, claim, f"{said}, evidence says it is {truth}")


class RuleVerifier:
    """Deterministic verdicts from the evidence entries' structured claims."""

    def verify(self, assertion: Assertion, evidence: Sequence[EvidenceEntry]) -> Judgement:
        verdicts = [
            j
            for entry in evidence
            for claim in entry.claims
            if is_relevant(claim, assertion)
            and (j := (check_quantity if claim.quantity else check_polarity)(claim, assertion, entry.id))
        ]
        for wanted in (REFUTED, SUPPORTED):
            if found := next((j for j in verdicts if j.verdict == wanted), None):
                return found
        ids = ", ".join(e.id for e in evidence) or "none"
        return Judgement(assertion, NOT_ENOUGH_INFO, reason=f"no relevant claim in evidence ({ids})")

    def verify_many(self, items: Sequence[tuple[Assertion, list[EvidenceEntry]]]) -> list[Judgement]:
        return [self.verify(a, ev) for a, ev in items]


# ------------------------------------------------------------------------------------------- LLM verifier

JUDGE_INSTRUCTION = (
    "You are a medical fact checker. Using only the evidence below, decide whether the statement is "
    "supported by the evidence, refuted by it, or whether the evidence is not enough to tell.\n\n"
    "Evidence:\n{evidence}\n\nStatement: {statement}\n\n"
    "Answer with exactly one word: SUPPORTED, REFUTED or NOT_ENOUGH_INFO."
)
_VERDICT_WORD = re.compile(
    r"\b(not[\s_-]+enough[\s_-]+info(?:rmation)?|not\s+supported|supported|refuted)\b", re.I
)


def parse_verdict(text: str) -> str | None:
    """The first verdict word in the judge's output ('not supported' -> not_enough_info); None if none."""
    m = _VERDICT_WORD.search(text)
    if m is None:
        return None
    word = m.group(1).lower()
    return {"supported": SUPPORTED, "refuted": REFUTED}.get(word, NOT_ENOUGH_INFO)


def judge_messages(assertion: Assertion, evidence: Sequence[EvidenceEntry]) -> list[dict[str, str]]:
    listed = "\n".join(f"[{e.id}] {e.text}" for e in evidence)
    content = JUDGE_INSTRUCTION.format(evidence=listed, statement=assertion.text)
    return [{"role": "user", "content": content}]


class LLMJudgeVerifier:
    """Generative verdicts from the run's LLM judge (`judge` group: in-process HF model or a server).

    No reply (timeout, server error) or a reply without a verdict word gives a Judgement with `error`
    set; the scorer then reports the answer as failed (the guard counts it) instead of guessing.
    """

    def __init__(self, judge: Any):
        self.judge = judge if hasattr(judge, "complete") else build_judge(judge)

    def verify_many(self, items: Sequence[tuple[Assertion, list[EvidenceEntry]]]) -> list[Judgement]:
        asked = [i for i, (_, ev) in enumerate(items) if ev]  # no evidence: nothing to ask
        replies = dict(
            zip(asked, self.judge.complete([judge_messages(*items[i]) for i in asked]), strict=True)
        )
        judgements = []
        for i, (assertion, evidence) in enumerate(items):
            reply = replies.get(i)
            if reply is None:
                judgements.append(Judgement(assertion, NOT_ENOUGH_INFO, reason="no evidence retrieved"))
                continue
            verdict = parse_verdict(reply.text) if reply.ok else None
            if verdict is None:
                error = reply.error or f"judge reply has no verdict word: {reply.text.strip()[:80]!r}"
                judgements.append(Judgement(assertion, NOT_ENOUGH_INFO, reason=error, error=error))
                continue
            reason = f"judge said {reply.text.strip()[:60]!r}"
            judgements.append(Judgement(assertion, verdict, evidence[0].id, reason=reason))
        return judgements


# -------------------------------------------------------------------------------------------- aggregation


def zero_tolerance(supported: torch.Tensor, refuted: torch.Tensor) -> torch.Tensor:  # (N,), (N,) -> (N,)
    return torch.where(refuted > 0, -1.0, 0.0)


def error_rate(supported: torch.Tensor, refuted: torch.Tensor) -> torch.Tensor:  # (N,), (N,) -> (N,)
    return 0.0 - refuted / (supported + refuted).clamp(min=1.0)  # 0.0 - x: no negative zero


AGGREGATES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "zero_tolerance": zero_tolerance,
    "error_rate": error_rate,
}


def build_verifier(name: str, judge: Any = None, judge_model: str | None = None) -> Verifier:
    """`rules`, or `llm` with the run's judge (`judge_model` = shorthand for a local judge on that model)."""
    if name == "rules":
        return RuleVerifier()
    if name == "llm":
        if judge_model:
            judge = {"kind": "local", "model": judge_model, "max_tokens": 8}
        if judge is None or (isinstance(judge, Mapping) and not judge.get("model")):
            raise ConfigError(
                "verifier 'llm' needs a judge: judge=local judge.model=<dir or hub name>, or judge=openai "
                "judge.base_url=http://HOST:PORT/v1 judge.model=<name> (or judge_model=<dir> for a local one)"
            )
        return LLMJudgeVerifier(judge)
    raise ConfigError(f"verifier: got {name!r}, expected 'rules' or 'llm'")


# ----------------------------------------------------------------------------------------------- scorer


def summary(judgements: Sequence[Judgement]) -> str:
    n = {v: sum(j.verdict == v for j in judgements) for v in VERDICTS}
    checked = n[SUPPORTED] + n[REFUTED]
    return (
        f"checked {checked} assertion{'' if checked == 1 else 's'}: {n[SUPPORTED]} supported, "
        f"{n[REFUTED]} refuted, {n[NOT_ENOUGH_INFO]} not enough information"
    )


def findings_for(judgements: Sequence[Judgement], missing_facts: Sequence[str]) -> list[str]:
    out = [
        f'refuted: "{j.assertion.text}" vs {j.evidence_id}: {j.reason}'
        for j in judgements
        if j.verdict == REFUTED
    ]
    out += [f"fact id {f!r} is not in the knowledge base" for f in missing_facts]
    return out + [summary(judgements)]


class AssertionScorer:
    """Matrix scorer for `correctness_atomic`: assertions -> evidence -> verdicts -> one score each."""

    def __init__(
        self,
        knowledge_base: str = "bundled",
        retriever: str = "bm25",
        top_k: int = 3,
        verifier: str = "rules",
        judge_model: str | None = None,
        aggregate: str = "zero_tolerance",
        judge: Any = None,
    ):
        if aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate: got {aggregate!r}, expected one of {', '.join(AGGREGATES)}")
        if top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0 = only the prompt's facts), got {top_k}")
        self.entries = load_knowledge_base(knowledge_base)
        self.by_id = {e.id: e for e in self.entries}
        self.retriever = build_retriever(retriever, self.entries) if self.entries else None
        self.top_k = top_k
        self.verifier = build_verifier(verifier, judge, judge_model)
        self.llm_judge = getattr(self.verifier, "judge", None)  # None with verifier=rules
        self.aggregate = AGGREGATES[aggregate]

    def evidence_for(self, prompts: Sequence[dict[str, Any]], assertions: Sequence[list[Assertion]]):
        """Per answer, per assertion: the prompt's facts first, then the retrieved entries (no repeats)."""
        flat = [a.text for answer in assertions for a in answer]
        hits = iter(self.retriever.retrieve_many(flat, self.top_k) if self.retriever else [[] for _ in flat])
        evidence: list[list[list[EvidenceEntry]]] = []
        for prompt, answer in zip(prompts, assertions, strict=True):
            facts = [self.by_id[f] for f in prompt.get("facts") or [] if f in self.by_id]
            per_answer = []
            for _ in answer:
                ranked = facts + [entry for entry, _ in next(hits)]
                per_answer.append(list({e.id: e for e in ranked}.values()))
            evidence.append(per_answer)
        return evidence

    def judgements(
        self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]
    ) -> list[list[Judgement]]:
        """Every assertion's verdict, per answer: the attributable record behind the scores."""
        assertions = [split_assertions(c) for c in completions]
        evidence = self.evidence_for(prompts, assertions)
        items = [(a, ev) for answer, evs in zip(assertions, evidence) for a, ev in zip(answer, evs)]
        flat = iter(self.verifier.verify_many(items))
        return [[next(flat) for _ in answer] for answer in assertions]

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        if not self.entries:
            return ScoreResult(torch.full((len(completions),), math.nan), [[] for _ in completions])
        judgements = self.judgements(prompts, completions)
        counts = torch.tensor(
            [[sum(j.verdict == v for j in js) for v in (SUPPORTED, REFUTED)] for js in judgements],
            dtype=torch.float32,
        ).reshape(-1, 2)  # (N, 2)
        scores = self.aggregate(counts[:, 0], counts[:, 1]).float()  # (N,)
        findings = [
            findings_for(js, [f for f in p.get("facts") or [] if f not in self.by_id])
            for p, js in zip(prompts, judgements, strict=True)
        ]
        failures = {
            i: f'assertion "{bad[0].assertion.text[:60]}": {bad[0].error}'
            for i, js in enumerate(judgements)
            if (bad := [j for j in js if j.error is not None])
        }
        return ScoreResult(scores, findings, failures)
