"""Expert-knowledge dimension: the rubric reward (Essential / Important / Highlight / Pitfall).

Interpretation (after QuarkMedBench section 2.2, which cites this paper for the rubric reward):

    positive = w_E * E_met + w_I * I_met + w_H * H_met       (points of the items matched)
    penalty  = w_P * P_hit                                    (points of the pitfalls the answer hits)
    score    = (positive - penalty) / (w_E * E_total + w_I * I_total + w_H * H_total),  clipped to [-1, 1]

with weights w_E : w_I : w_H : w_P = 2 : 1 : 1 : 2 by default, and two guards:

- truncation: when fewer than `min_essential_ratio` of the essential points are met, or any pitfall is
  hit, the bonus items (important, highlight) count for nothing;
- saturation: the bonus points counted are capped at `saturation_ratio` x the essential points total,
  so padding an answer with many minor points cannot outweigh the essentials.

An item is met when any of its `any` regular expressions matches the answer (case-insensitive); with
`matcher: semantic` or `matcher: llm` a MiniLM similarity or the run's LLM judge (`judge` group) can
also find it met (rubric_matchers.py); an answer whose judge verdict failed is reported as a failed
sample (ScoreResult.failures), not scored as if the item were missed. With `reference_scaling`, a prompt's `rubric_reference_mean` (the mean score of
reference answers to it, QuarkMedBench-style) is subtracted, so the score says "better or worse than
the reference models on this prompt".
Item weights (the closed loop's item-level action, callbacks/closed_loop.py): `set_item_weights({prompt
id: {item id: w}})` multiplies an item's points by w in both the points met and the totals, so a missed
essential with w = 2 costs twice its share of the score and a hit pitfall with w = 2 takes twice its
penalty; absent items weigh 1.
Prompts without a rubric get NaN (not applicable). Findings name every missed essential, every hit
pitfall and whether truncation or saturation applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from quark_lightning.scorers.interface import ScoreResult
from quark_lightning.scorers.rubric_matchers import build_matcher, match_verdicts

ITEM_TYPES = ("essential", "important", "highlight", "pitfall")


class RubricScorer:
    def __init__(
        self,
        weights: dict[str, float] | None = None,
        truncation: bool = True,
        min_essential_ratio: float = 1.0,
        saturation_ratio: float | None = 1.0,
        matcher: str = "regex",
        matcher_kwargs: dict[str, Any] | None = None,
        reference_scaling: bool = False,
        judge: Any = None,
    ):
        self.weights = {"essential": 2.0, "important": 1.0, "highlight": 1.0, "pitfall": 2.0}
        if weights:
            unknown = set(weights) - set(ITEM_TYPES)
            if unknown:
                raise ValueError(f"rubric weights: unknown item type(s) {sorted(unknown)}; use {ITEM_TYPES}")
            self.weights.update({k: float(v) for k, v in weights.items()})
        self.truncation = truncation
        self.min_essential_ratio = min_essential_ratio
        self.saturation_ratio = saturation_ratio
        kwargs = dict(matcher_kwargs or {})
        if matcher == "llm" and judge is not None and "judge_model" not in kwargs:
            kwargs["judge"] = judge  # the run's `judge` group
        self.matcher = build_matcher(matcher, **kwargs)
        self.llm_judge = getattr(self.matcher, "judge", None)  # None unless matcher=llm
        self.reference_scaling = reference_scaling
        self.item_weights: dict[str, dict[str, float]] = {}  # prompt id -> item id -> weight (closed loop)

    def set_item_weights(self, weights: dict[str, dict[str, float]]) -> None:
        """The closed loop's per-item weights (1 = neutral; omitted items weigh 1)."""
        self.item_weights = {
            str(p): {str(i): float(w) for i, w in items.items() if w != 1.0} for p, items in weights.items()
        }
        self.item_weights = {p: items for p, items in self.item_weights.items() if items}

    def outcomes(
        self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]
    ) -> list[list[tuple[dict[str, Any], bool | None]]]:
        """Per answer, (item, met) for every rubric item (met None: the matcher failed on it)."""
        pairs = [
            (item, a) for p, a in zip(prompts, completions, strict=True) for item in p.get("rubric") or []
        ]
        verdicts = iter(match_verdicts(self.matcher, pairs))
        out = []
        for p in prompts:
            out.append(
                [
                    (item, None if (v := next(verdicts)).error else bool(v.met))
                    for item in p.get("rubric") or []
                ]
            )
        return out

    def score_one(
        self,
        rubric: list[dict[str, Any]],
        answer: str,
        hits: list[bool] | None = None,
        item_weights: dict[str, float] | None = None,
    ) -> tuple[float, list[str]]:
        if hits is None:
            hits = self.matcher.match([(item, answer) for item in rubric])
        item_weights = item_weights or {}
        met = {t: 0.0 for t in ITEM_TYPES}
        total = {t: 0.0 for t in ITEM_TYPES}
        findings: list[str] = []
        for item, hit in zip(rubric, hits, strict=True):
            kind = item["type"]
            points = float(item.get("points", 1.0)) * item_weights.get(str(item.get("id")), 1.0)
            total[kind] += points
            if hit:
                met[kind] += points
            if kind == "essential" and not hit:
                findings.append(f"missed essential {item['id']}: {item['text']}")
            elif kind == "pitfall" and hit:
                findings.append(f"hit pitfall {item['id']}: {item['text']}")
        w = self.weights
        essential = w["essential"] * met["essential"]
        bonus = w["important"] * met["important"] + w["highlight"] * met["highlight"]
        essential_ratio = met["essential"] / total["essential"] if total["essential"] else 1.0
        if (
            self.truncation
            and (essential_ratio < self.min_essential_ratio or met["pitfall"] > 0)
            and bonus > 0
        ):
            findings.append("truncation: bonus items not counted (essential missed or pitfall hit)")
            bonus = 0.0
        if self.saturation_ratio is not None and total["essential"] > 0:
            cap = self.saturation_ratio * w["essential"] * total["essential"]
            if bonus > cap:
                findings.append(f"saturation: bonus points capped at {cap:g}")
                bonus = cap
        denominator = sum(w[t] * total[t] for t in ("essential", "important", "highlight"))
        if denominator == 0:
            return (-1.0 if met["pitfall"] else math.nan), findings
        score = (essential + bonus - w["pitfall"] * met["pitfall"]) / denominator
        return max(-1.0, min(1.0, score)), findings

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        pairs = [
            (item, answer)
            for p, answer in zip(prompts, completions, strict=True)
            for item in p.get("rubric") or []
        ]
        verdicts = match_verdicts(self.matcher, pairs)  # one batched call for every (item, answer)
        scores, findings, failures, start = [], [], {}, 0
        for i, (prompt, answer) in enumerate(zip(prompts, completions)):
            rubric = prompt.get("rubric") or []
            if not rubric:
                scores.append(math.nan)
                findings.append([])
                continue
            own = verdicts[start : start + len(rubric)]
            start += len(rubric)
            bad = [(item, v) for item, v in zip(rubric, own) if v.error is not None]
            if bad:
                failures[i] = f"rubric item {bad[0][0].get('id', '?')}: {bad[0][1].error}"
            weights = self.item_weights.get(str(prompt.get("id")))
            s, f = self.score_one(rubric, answer, [bool(v.met) for v in own], weights)
            mean = prompt.get("rubric_reference_mean")
            if self.reference_scaling and isinstance(mean, (int, float)):
                f.append(f"scaled against the reference mean {mean:g}: {s:.3f} -> {s - mean:.3f}")
                s -= mean
            scores.append(s)
            findings.append(f)
        return ScoreResult.from_lists(scores, findings, failures)
