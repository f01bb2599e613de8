"""HealthBench scoring (OpenAI, arXiv 2505.08775): the score formula and the matrix scorer.

Scoring follows the HealthBench formula (openai/simple-evals `healthbench_eval.py`, also used by
inspect_evals): per example `score = sum(signed points of met criteria) / sum(positive points)`, which
can be negative; the overall score is the mean of the per-example scores, clipped to [0, 1] (the mean
is clipped, not each example), with a bootstrap standard error (1000 resamples of the clipped mean).
Per-axis scores are computed the same way on each axis's criteria alone, over the examples that have at
least one positive criterion on that axis. The optional length adjustment is not applied.

`HealthBenchScorer` is a matrix scorer returning the unclipped per-example score; which criteria an
answer meets is decided by a grader (scorers/healthbench_grader.py): `published` (default: HealthBench's
protocol, the whole conversation and one rubric item to the run's `judge`, a JSON `criteria_met`
verdict), or the named alternatives `llm_answer_only`, `semantic` and `regex`, which are not the
published method. The regex grader only sees the items' `any` patterns, which converted HealthBench rows
leave empty, so with it nothing is ever met: use it only for rows that carry patterns.

`AXIS_TO_DIMENSION` maps the five axes onto our matrix dimensions (an interpretation, not part of
HealthBench).

Criteria are read in either form: HealthBench's own (`points`, `tags`) or converted by
data/healthbench.py (`hb_points`, `axis`), which loads and converts HealthBench-format files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from quark_lightning.data.healthbench import criterion_axis, signed_points
from quark_lightning.scorers.healthbench_grader import build_grader
from quark_lightning.scorers.interface import ScoreResult

# Interpretation: which matrix dimension each HealthBench axis speaks to.
AXIS_TO_DIMENSION: dict[str, str] = {
    "accuracy": "correctness_atomic",
    "completeness": "usefulness",
    "communication_quality": "format_rules",
    "context_awareness": "usefulness",
    "instruction_following": "format_rules",
}
BOOTSTRAP_SAMPLES = 1000


def example_scores(met: np.ndarray, points: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per-example `sum(met points) / sum(positive points)`; NaN where an example has no positive points."""
    achieved = np.bincount(owner, weights=np.where(met, points, 0.0), minlength=n)
    possible = np.bincount(owner, weights=np.clip(points, 0.0, None), minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(possible > 0, achieved / np.where(possible > 0, possible, 1.0), np.nan)


def clipped_mean_stats(values: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean clipped to [0, 1], bootstrap std of the clipped mean, its 95% percentile interval (`ci_low`,
    `ci_high`, over examples), and n (NaN entries are left out)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"score": math.nan, "std_error": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    resampled = values[rng.integers(0, values.size, size=(BOOTSTRAP_SAMPLES, values.size))]
    means = np.clip(resampled.mean(axis=1), 0.0, 1.0)
    return {
        "score": float(np.clip(values.mean(), 0.0, 1.0)),
        "std_error": float(means.std()),
        "ci_low": float(np.percentile(means, 2.5)),
        "ci_high": float(np.percentile(means, 97.5)),
        "n": int(values.size),
    }


def healthbench_score(
    criteria_met: Sequence[Sequence[bool]], rubrics: Sequence[Sequence[dict[str, Any]]], seed: int = 0
) -> dict[str, Any]:
    """HealthBench scores: `overall` (clipped mean), `std_error`, `n`, `per_example` (unclipped), `axes`.

    `axes` maps each axis to {"score", "std_error", "n"}, computed on that axis's criteria alone.
    Criteria may be in the HealthBench form (`points`, `tags`) or converted (`hb_points`, `axis`).
    """
    if len(criteria_met) != len(rubrics):
        raise ValueError(f"criteria_met has {len(criteria_met)} examples but rubrics has {len(rubrics)}")
    for i, (met, rubric) in enumerate(zip(criteria_met, rubrics)):
        if len(met) != len(rubric):
            raise ValueError(f"example {i}: {len(met)} grades for {len(rubric)} criteria")
    n = len(rubrics)
    owner = np.array([i for i, rubric in enumerate(rubrics) for _ in rubric], dtype=np.int64)
    points = np.array([signed_points(item) for rubric in rubrics for item in rubric], dtype=np.float64)
    met = np.array([bool(m) for grades in criteria_met for m in grades], dtype=bool)
    axes = np.array([criterion_axis(item) for rubric in rubrics for item in rubric], dtype=object)
    per_example = example_scores(met, points, owner, n)
    overall = clipped_mean_stats(per_example, seed)
    by_axis = {}
    for axis in sorted(set(axes.tolist())):
        keep = axes == axis
        by_axis[axis] = clipped_mean_stats(example_scores(met[keep], points[keep], owner[keep], n), seed)
    return {
        "overall": overall["score"],
        "std_error": overall["std_error"],
        "ci_low": overall["ci_low"],
        "ci_high": overall["ci_high"],
        "n": overall["n"],
        "per_example": per_example.tolist(),
        "axes": by_axis,
    }


class HealthBenchScorer:
    """Matrix scorer: the unclipped HealthBench score of each answer (NaN without HealthBench criteria).

    `grader` is a name for `build_grader` (scorers/healthbench_grader.py): `published` (the default:
    HealthBench's protocol through the run's `judge`), or `llm_answer_only`, `semantic`, `regex`
    (named alternatives that are not the published method), or any object with `.grade(triples)` or
    `.match(pairs)`. `axes`, when given, restricts scoring to those axes' criteria (e.g. the axes that
    `AXIS_TO_DIMENSION` maps to one dimension). An answer with a criterion the grader could not decide
    is a failed sample (ScoreResult.failures).
    """

    def __init__(
        self,
        grader: str | Any = "published",
        judge: Any = None,
        grader_kwargs: dict[str, Any] | None = None,
        axes: Sequence[str] | None = None,
    ):
        self.grader = build_grader(grader, judge, **dict(grader_kwargs or {}))
        self.llm_judge = getattr(self.grader, "judge", None)
        self.axes = set(axes) if axes is not None else None

    def criteria(self, prompt: dict[str, Any]) -> list[dict[str, Any]]:
        items = [item for item in prompt.get("rubric") or [] if "hb_points" in item]
        return [item for item in items if self.axes is None or criterion_axis(item) in self.axes]

    def score_one(self, items: list[dict[str, Any]], hits: Sequence[bool]) -> tuple[float, list[str]]:
        findings, achieved, possible = [], 0.0, 0.0
        for item, hit in zip(items, hits, strict=True):
            pts = signed_points(item)
            possible += max(pts, 0.0)
            achieved += pts if hit else 0.0
            label = f"{item.get('id', '?')} ({pts:+g} points, axis {criterion_axis(item)}): {item.get('text', '')}"
            if hit and pts < 0:
                findings.append(f"met negative criterion {label}")
            elif not hit and pts > 0:
                findings.append(f"missed positive criterion {label}")
        if possible == 0:
            return math.nan, findings + ["no positive criteria: HealthBench score undefined"]
        return achieved / possible, findings

    def grade(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]):
        """Per prompt: its criteria and the grader's Verdict on each (one batched grader call)."""
        per_prompt = [self.criteria(p) for p in prompts]
        triples = [
            (p.get("messages") or [], answer, item)
            for p, items, answer in zip(prompts, per_prompt, completions, strict=True)
            for item in items
        ]
        verdicts = iter(self.grader.grade(triples) if triples else [])
        return [(items, [next(verdicts) for _ in items]) for items in per_prompt]

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        scores, findings, failures = [], [], {}
        for i, (items, verdicts) in enumerate(self.grade(prompts, completions)):
            if not items:
                scores.append(math.nan)
                findings.append([])
                continue
            bad = [(item, v) for item, v in zip(items, verdicts) if v.error is not None]
            if bad:
                failures[i] = f"criterion {bad[0][0].get('id', '?')}: {bad[0][1].error}"
            s, f = self.score_one(items, [bool(v.met) for v in verdicts])
            scores.append(s)
            findings.append(f)
        return ScoreResult.from_lists(scores, findings, failures)
