"""Observable metrics and attributable diagnosis of one evaluation (the first two steps of the loop).

From the matrix's scores (N, K) and findings on a set of (prompt, answer) pairs:

- per dimension (torchmetrics `MeanMetric`s): `mean` raw score, `pass_rate` = share of applicable
  answers with score >= the dimension's target, `violation_rate` = 1 - pass_rate, `count` of applicable
  answers (a dimension without a target, such as a reward model's raw logit, has a mean but no pass
  rate unless `reference_scores` are given: then its target is the reference answer's score on the same
  prompt, and `pass_rate` = share of answers scoring at least as high as the reference), and apart from them `failed` (the scorer failed on the answer,
  matrix/alignment_matrix.py) and `not_applicable` (the dimension does not apply); both are NaN scores and
  neither counts in the mean or pass rate, but a failure is a fault, not "does not apply";
- per category: the mean pass rate of its dimensions;
- per clinical area: the pass rate over every (answer, dimension) pair of the area, and per dimension;
- diagnosis: the findings behind failures, grouped by their template (numbers and quoted spans
  replaced by placeholders, so "length: 7 words" and "length: 9 words" are one group, while item ids
  such as `e2` are kept, so each rubric item is its own group), counted per dimension and ranked by
  share of answers. What is printed is never the template: each group shows its most frequent concrete
  finding ("missed essential e2: Tells the person to call an ambulance now"), how many variants it
  has, and example answers that each carry a finding of the group (quoted with the example), chosen so
  that different groups show different answers where they can.

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

from quark_lightning.infra.precision import upcast
from quark_lightning.matrix import AlignmentMatrix, MatrixScores

_NUMBER = re.compile(r"(?<![A-Za-z_])\d+(\.\d+)?%?")  # not item ids such as e2 or c13
_QUOTED = re.compile(r"(['\"]).*?\1")


_QUOTED_RUN = re.compile(r"'\.\.\.'(?:\s*,\s*'\.\.\.')+")


def finding_pattern(finding: str) -> str:
    """A finding's template: quoted spans (a list of them counts as one) and numbers replaced, item ids
    kept, so similar failures group together. Only a grouping key: reports print concrete findings."""
    return _NUMBER.sub("#", _QUOTED_RUN.sub("'...'", _QUOTED.sub("'...'", finding))).strip()


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
    matrix: AlignmentMatrix,
    scores: torch.Tensor,
    passed: torch.Tensor,
    failed: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
) -> dict[str, dict]:
    """Per dimension: mean, pass rate, count of scored answers, and the failed / not-applicable counts.
    scores, passed, failed: (N, K); `failed` None = no failures. reference: (N, K) reference-answer scores
    for the dimensions judged against the reference (NaN elsewhere), or None."""
    failed = torch.zeros(scores.shape, dtype=torch.bool) if failed is None else failed.cpu().bool()
    relative = judged_against_reference(matrix, reference)
    out = {}
    for k, dim in enumerate(matrix.dimensions):
        applicable = ~torch.isnan(scores[:, k])
        if relative[k]:
            applicable &= ~torch.isnan(reference[:, k])
        n = int(applicable.sum())
        has_target = dim.target is not None or bool(relative[k])
        rate = _mean(passed[applicable, k].float()) if n and has_target else float("nan")
        out[dim.name] = {
            "category": dim.category,
            "mean": _mean(scores[:, k]) if n else float("nan"),
            "pass_rate": rate,
            "violation_rate": 1.0 - rate if n and has_target else float("nan"),
            "count": n,
            "failed": int(failed[:, k].sum()),
            "not_applicable": int((~applicable & ~failed[:, k]).sum()),
            "target": "reference" if relative[k] else dim.target,
        }
        if relative[k]:
            out[dim.name]["reference_mean"] = _mean(reference[applicable, k]) if n else float("nan")
    return out


def judged_against_reference(matrix: AlignmentMatrix, reference: torch.Tensor | None) -> torch.Tensor:
    """(K,) bool: target-less dimensions (reward models) that have reference scores to be judged against."""
    if reference is None:
        return torch.zeros(len(matrix.dimensions), dtype=torch.bool)
    no_target = torch.tensor([d.target is None for d in matrix.dimensions])
    return no_target & ~torch.isnan(reference).all(dim=0)


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


def _example(prompts, completions, i: int, finding: str) -> dict[str, Any]:
    return {
        "id": prompts[i]["id"],
        "area": prompts[i].get("area", "general"),
        "question": prompts[i]["messages"][-1]["content"],
        "answer": str(completions[i]),  # plain text: a rollout's Completion must not reach saved state
        "finding": finding,  # what this answer shows of the group
    }


def diagnose(
    prompts: Sequence[dict[str, Any]],
    completions: Sequence[str],
    findings: dict[str, list[list[str]]],
    passed: torch.Tensor,
    names: list[str],
    top_k: int = 5,
    examples: int = 2,
) -> list[dict[str, Any]]:
    """The most frequent finding groups among failing answers, per dimension, with examples.

    Each entry: `finding` (the group's most frequent concrete finding, unmasked), `template` (the
    grouping key), `variants` (distinct concrete findings in the group), `count` / `share` of answers,
    and `examples` whose `finding` is that answer's own finding of the group. Examples prefer answers
    showing the printed finding, then answers no higher-ranked group already shows."""
    groups: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)  # (dim, template) -> answer -> finding
    for k, name in enumerate(names):
        for i, found in enumerate(findings.get(name, [])):
            if passed[i, k]:
                continue
            for f in sorted(found):  # stable across processes
                groups[(name, finding_pattern(f))].setdefault(i, f)
    n = max(1, len(completions))
    ranked = []
    for name in names:
        own = sorted(
            ((t, rows) for (d, t), rows in groups.items() if d == name), key=lambda g: (-len(g[1]), g[0])
        )
        ranked += [(name, t, rows) for t, rows in own[:top_k]]
    ranked.sort(key=lambda g: -len(g[2]))
    shown: set[int] = set()
    out = []
    for name, template, rows in ranked:
        common, _ = Counter(rows.values()).most_common(1)[0]
        order = sorted(rows, key=lambda i: (rows[i] != common, i in shown, i))
        picked = order[:examples]
        shown.update(picked)
        out.append(
            {
                "dimension": name,
                "finding": common,
                "template": template,
                "variants": len(set(rows.values())),
                "count": len(rows),
                "share": len(rows) / n,
                "examples": [_example(prompts, completions, i, rows[i]) for i in picked],
            }
        )
    return out


def evaluation_metrics(
    matrix: AlignmentMatrix,
    prompts: Sequence[dict[str, Any]],
    completions: Sequence[str],
    scored: MatrixScores,
    step: int = 0,
    reference_scores: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Everything one evaluation observes and diagnoses, as a JSON-serializable dict.

    reference_scores: (N, K) the matrix's scores of each prompt's reference answer, or None. Target-less
    dimensions with reference scores pass where the answer scores >= the reference (see module doc)."""
    scores = scored.scores.float()
    passed = pass_mask(scores, [d.target for d in matrix.dimensions])
    relative = judged_against_reference(matrix, reference_scores)
    if relative.any():
        ref = reference_scores.float()
        passed[:, relative] = scores[:, relative] >= ref[:, relative]  # NaN on either side -> False
    dims = dimension_metrics(matrix, scores, passed, scored.failed, reference_scores)
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
            torch.tensor([d.target is not None for d in matrix.dimensions]) | relative,
        ),
        "diagnosis": diagnose(prompts, completions, scored.findings, passed, matrix.names),
        "actions": [],
    }


def answer_lengths(completion_mask: torch.Tensor, truncated: torch.Tensor) -> dict[str, float]:
    """How long the evaluated answers are, beside how good: their mean length in tokens (EOS included) and
    the share cut at the completion cap. completion_mask: (N, C); truncated: (N,) bool."""
    return {
        "mean_tokens": float(completion_mask.sum(dim=1).float().mean()),
        "cut_share": float(truncated.float().mean()),
    }


def gate_failures(scored: MatrixScores, gates, i: int) -> list[int]:
    """Indices k of the gated dimensions whose gate answer i fails (a failed scorer counts as failing)."""
    out = []
    for k, gate in gates:
        score = float(scored.scores[i, k])
        if bool(scored.failed[i, k]) or (score == score and score < gate.below):  # NaN: not applicable
            out.append(k)
    return out


def failing_answers(matrix: AlignmentMatrix, scored: MatrixScores) -> list[bool]:
    """Per answer: it fails a gate, or meets fewer than half of its applicable targeted dimensions (an
    answer no targeted dimension applies to fails only through a gate)."""
    passed = pass_mask(upcast(scored.scores), [d.target for d in matrix.dimensions])  # (N, K)
    targeted = torch.tensor([d.target is not None for d in matrix.dimensions])
    applicable = (~torch.isnan(scored.scores) & targeted).sum(1)  # (N,)
    low = (passed.sum(1) < 0.5 * applicable) & (applicable > 0)  # (N,)
    gates = matrix.gates()
    return [bool(low[i]) or bool(gate_failures(scored, gates, i)) for i in range(len(low))]
