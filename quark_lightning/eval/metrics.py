"""Observable metrics and attributable diagnosis of one evaluation (the first two steps of the loop).

From the matrix's scores (N, K) and findings on a set of (prompt, answer) pairs:

- per dimension (torchmetrics `MeanMetric`s): `mean` raw score, `pass_rate` = share of applicable
  answers with score >= the dimension's target, `violation_rate` = 1 - pass_rate, `count` of applicable
  answers (a dimension without a target, such as a reward model's raw logit, has a mean but no pass
  rate, and the loop never pushes it), and apart from them `failed` (the scorer failed on the answer,
  matrix/guard.py) and `not_applicable` (the dimension does not apply); both are NaN scores and
  neither counts in the mean or pass rate, but a failure is a fault, not "does not apply";
- per category: the mean pass rate of its dimensions;
- per clinical area: the pass rate over every (answer, dimension) pair of the area, and per dimension;
- diagnosis: the findings behind failures, grouped into patterns (numbers and quoted spans replaced by
  placeholders, so "length: 7 words" and "length: 9 words" are one pattern), counted per dimension,
  ranked by share of answers, each with example prompts and answers.

Everything returned is plain JSON-serializable data: the report writer, TensorBoard, the closed-loop
callback and `evaluate.py` all read the same dictionary.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import MeanMetric

from quark_lightning.matrix import AlignmentMatrix, MatrixScores

_NUMBER = re.compile(r"\d+(\.\d+)?%?")
_QUOTED = re.compile(r"(['\"]).*?\1")


def finding_pattern(finding: str) -> str:
    """A finding with its specifics removed, so similar failures group together."""
    return _NUMBER.sub("#", _QUOTED.sub("'...'", finding)).strip()


def pass_mask(scores: torch.Tensor, targets: Sequence[float | None]) -> torch.Tensor:
    """(N, K) bool: the answer meets the dimension's target; NaN scores and target-less dimensions -> False."""
    thresholds = torch.tensor([math.nan if t is None else float(t) for t in targets], dtype=scores.dtype)
    return scores >= thresholds.unsqueeze(0)


def _mean(values: torch.Tensor) -> float:
    metric = MeanMetric(nan_strategy="ignore")
    metric.update(values.float())
    out = float(metric.compute())
    return out if math.isfinite(out) else float("nan")


def dimension_metrics(
    matrix: AlignmentMatrix, scores: torch.Tensor, passed: torch.Tensor, failed: torch.Tensor | None = None
) -> dict[str, dict]:
    """Per dimension: mean, pass rate, count of scored answers, and the failed / not-applicable counts.
    scores, passed, failed: (N, K); `failed` None = no failures."""
    failed = torch.zeros(scores.shape, dtype=torch.bool) if failed is None else failed.cpu().bool()
    out = {}
    for k, dim in enumerate(matrix.dimensions):
        applicable = ~torch.isnan(scores[:, k])
        n = int(applicable.sum())
        has_target = dim.target is not None
        rate = _mean(passed[applicable, k].float()) if n and has_target else float("nan")
        out[dim.name] = {
            "category": dim.category,
            "mean": _mean(scores[:, k]) if n else float("nan"),
            "pass_rate": rate,
            "violation_rate": 1.0 - rate if n and has_target else float("nan"),
            "count": n,
            "failed": int(failed[:, k].sum()),
            "not_applicable": int((~applicable & ~failed[:, k]).sum()),
            "target": dim.target,
        }
    return out


def category_metrics(dims: dict[str, dict]) -> dict[str, dict]:
    groups: dict[str, list[float]] = defaultdict(list)
    for row in dims.values():
        if not math.isnan(row["pass_rate"]):
            groups[row["category"]].append(row["pass_rate"])
    return {cat: {"pass_rate": sum(v) / len(v), "dimensions": len(v)} for cat, v in groups.items()}


def area_metrics(
    prompts: Sequence[dict[str, Any]],
    names: list[str],
    scores: torch.Tensor,
    passed: torch.Tensor,
    has_target: torch.Tensor,
) -> dict[str, dict]:
    areas = [p.get("area", "general") for p in prompts]
    out = {}
    for area in sorted(set(areas)):
        rows = torch.tensor([a == area for a in areas])
        applicable = ~torch.isnan(scores[rows]) & has_target.unsqueeze(0)  # (n_area, K)
        per_dim = {
            n: _mean(passed[rows][applicable[:, k], k].float())
            for k, n in enumerate(names)
            if applicable[:, k].any()
        }
        out[area] = {
            "count": int(rows.sum()),
            "pass_rate": _mean(passed[rows][applicable].float()),
            "dimensions": per_dim,
        }
    return out


def diagnose(
    prompts: Sequence[dict[str, Any]],
    completions: Sequence[str],
    findings: dict[str, list[list[str]]],
    passed: torch.Tensor,
    names: list[str],
    top_k: int = 5,
    examples: int = 2,
) -> list[dict[str, Any]]:
    """The most frequent finding patterns among failing answers, per dimension, with examples."""
    out = []
    n = max(1, len(completions))
    for k, name in enumerate(names):
        counts: Counter[str] = Counter()
        seen: dict[str, list[int]] = defaultdict(list)
        for i, found in enumerate(findings.get(name, [])):
            if passed[i, k]:
                continue
            for pattern in sorted({finding_pattern(f) for f in found}):  # stable across processes
                counts[pattern] += 1
                seen[pattern].append(i)
        for pattern, count in counts.most_common(top_k):
            out.append(
                {
                    "dimension": name,
                    "finding": pattern,
                    "count": count,
                    "share": count / n,
                    "examples": [
                        {
                            "id": prompts[i]["id"],
                            "area": prompts[i].get("area", "general"),
                            "question": prompts[i]["messages"][-1]["content"],
                            "answer": completions[i],
                        }
                        for i in seen[pattern][:examples]
                    ],
                }
            )
    return sorted(out, key=lambda d: -d["share"])


def evaluation_metrics(
    matrix: AlignmentMatrix,
    prompts: Sequence[dict[str, Any]],
    completions: Sequence[str],
    scored: MatrixScores,
    step: int = 0,
) -> dict[str, Any]:
    """Everything one evaluation observes and diagnoses, as a JSON-serializable dict."""
    scores = scored.scores.float()
    passed = pass_mask(scores, [d.target for d in matrix.dimensions])
    dims = dimension_metrics(matrix, scores, passed, scored.failed)
    return {
        "step": step,
        "num_samples": len(completions),
        "dimensions": dims,
        "categories": category_metrics(dims),
        "areas": area_metrics(
            prompts,
            matrix.names,
            scores,
            passed,
            torch.tensor([d.target is not None for d in matrix.dimensions]),
        ),
        "diagnosis": diagnose(prompts, completions, scored.findings, passed, matrix.names),
        "actions": [],
    }
