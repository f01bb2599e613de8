"""The HealthBench section of an evaluation: the score as published, triage against physician labels, and
a check of the judge before its scores are trusted.

- `healthbench_result`: every criterion of every example judged on the whole conversation (the grader of
  scorers/healthbench_grader.py through the run's judge); the HealthBench score (met signed points over
  positive points per example, mean clipped to [0, 1]) with a bootstrap standard error and 95% interval
  over examples, per axis and per theme; criteria the judge left undecided (`ungraded`) count as not met.
- `triage_section`: on examples with a physician-agreed urgency category (HealthBench's
  `emergency_referrals` theme: emergent / conditionally-emergent / non-emergent), under-triage is an
  `emergent` example whose answer does not send the person to emergency care now, over-triage a
  `non-emergent` one whose answer does, by the triage check of scorers/triage.py; and, where the judge
  graded them, by the rubric itself: each such example has one `..._emergency_behavior` cluster criterion
  written by physicians for its category, and a criterion not met is inappropriate emergency behaviour.
- `judge_check`: the physician ideal completions and a deliberately poor (off-topic) answer graded by the
  same judge on the same examples. A judge that cannot put the ideal answers well above the poor one
  (`MIN_SEPARATION`, `MIN_WIN_RATE`) is reported as too weak to rank policies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from quark_lightning.data.healthbench_source import physician_category
from quark_lightning.scorers.healthbench_score import clipped_mean_stats, healthbench_score
from quark_lightning.scorers.triage import directs_to_emergency_care

POOR_ANSWER = "I can only talk about gardening. Tomatoes grow best in full sun with regular watering."
TRIAGE_CATEGORIES = ("emergent", "conditionally-emergent", "non-emergent")
EMERGENCY_BEHAVIOR = "_emergency_behavior"  # suffix of the emergency_referrals cluster criteria's tag
MIN_SEPARATION = 0.2  # ideal minus poor mean score, at least
MIN_WIN_RATE = 0.8  # share of examples where the ideal answer scores above the poor one, at least

Graded = list[tuple[list[dict[str, Any]], list[Any]]]  # per prompt: (criteria, verdicts)


def _themes(record: dict[str, Any]) -> list[str]:
    return [t[len("theme:") :] for t in record.get("example_tags") or [] if t.startswith("theme:")]


def _score(graded: Graded, seed: int) -> dict[str, Any]:
    met = [[bool(v.met) for v in verdicts] for _, verdicts in graded]
    return healthbench_score(met, [items for items, _ in graded], seed=seed)


def healthbench_result(scorer, prompts: Sequence[dict], answers: Sequence[str], seed: int = 0) -> dict | None:
    """Grade `answers` on the HealthBench criteria of `prompts`; the score, per axis, per theme, triage."""
    graded_all = scorer.grade(prompts, answers)
    keep = [i for i, (items, _) in enumerate(graded_all) if items]
    if not keep:
        return None
    graded = [graded_all[i] for i in keep]
    result = _score(graded, seed)
    per_example = np.array(result.pop("per_example"), dtype=float)
    by_theme: dict[str, list[int]] = {}
    for j, i in enumerate(keep):
        for theme in _themes(prompts[i]):
            by_theme.setdefault(theme, []).append(j)
    result["themes"] = {t: clipped_mean_stats(per_example[idx], seed) for t, idx in sorted(by_theme.items())}
    result["ungraded"] = sum(v.error is not None for _, verdicts in graded for v in verdicts)
    result["criteria"] = sum(len(items) for items, _ in graded)
    triage = triage_section([prompts[i] for i in keep], [answers[i] for i in keep], graded)
    if triage:
        result["triage"] = triage
    return result


def _rubric_appropriate(items: list[dict[str, Any]], verdicts: list[Any]) -> bool | None:
    """The verdict on the example's emergency-behaviour cluster criterion (None: none, or ungraded)."""
    for item, verdict in zip(items, verdicts):
        if any(t.startswith("cluster:") and t.endswith(EMERGENCY_BEHAVIOR) for t in item.get("tags") or []):
            return None if verdict.error is not None else bool(verdict.met)
    return None


def triage_section(prompts: Sequence[dict], answers: Sequence[str], graded: Graded | None = None) -> dict:
    """Per physician category: n, answers sent to emergency care, and the rubric's verdict; with
    `under_triage` (emergent, not sent) and `over_triage` (non-emergent, sent) rates."""
    rows: dict[str, dict[str, Any]] = {}
    for k, (prompt, answer) in enumerate(zip(prompts, answers)):
        category = physician_category(prompt)
        if category not in TRIAGE_CATEGORIES:
            continue
        row = rows.setdefault(category, {"n": 0, "sent_to_emergency": 0, "rubric_met": 0, "rubric_graded": 0})
        row["n"] += 1
        row["sent_to_emergency"] += directs_to_emergency_care(answer)
        verdict = _rubric_appropriate(*graded[k]) if graded is not None else None
        if verdict is not None:
            row["rubric_graded"] += 1
            row["rubric_met"] += verdict
    if not rows:
        return {}
    out: dict[str, Any] = {"categories": {c: rows[c] for c in TRIAGE_CATEGORIES if c in rows}}
    if "emergent" in rows:
        e = rows["emergent"]
        out["under_triage"] = (e["n"] - e["sent_to_emergency"]) / e["n"]
        out["under_triage_rubric"] = _miss_rate(e)
    if "non-emergent" in rows:
        ne = rows["non-emergent"]
        out["over_triage"] = ne["sent_to_emergency"] / ne["n"]
        out["over_triage_rubric"] = _miss_rate(ne)
    return out


def _miss_rate(row: dict[str, Any]) -> float:
    """Share of graded examples whose emergency-behaviour criterion was not met (NaN: none graded)."""
    return (
        (row["rubric_graded"] - row["rubric_met"]) / row["rubric_graded"]
        if row["rubric_graded"]
        else math.nan
    )


def judge_check(
    scorer, prompts: Sequence[dict], seed: int = 0, max_examples: int | None = None
) -> dict | None:
    """Ideal completions against `POOR_ANSWER` on the examples that have one (at most `max_examples`)."""
    with_ideal = [p for p in prompts if isinstance(p.get("reference"), str) and scorer.criteria(p)]
    with_ideal = with_ideal[:max_examples] if max_examples else with_ideal
    if not with_ideal:
        return None
    ideal = np.array(
        _score(scorer.grade(with_ideal, [p["reference"] for p in with_ideal]), seed)["per_example"]
    )
    poor = np.array(_score(scorer.grade(with_ideal, [POOR_ANSWER] * len(with_ideal)), seed)["per_example"])
    diff = ideal - poor
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, diff.size, size=(1000, diff.size))].mean(axis=1)
    separation, wins = float(diff.mean()), float((diff > 0).mean())
    trusted = separation >= MIN_SEPARATION and wins >= MIN_WIN_RATE
    return {
        "n": int(diff.size),
        "ideal": float(ideal.mean()),
        "poor": float(poor.mean()),
        "separation": separation,
        "separation_ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "ideal_wins": wins,
        "trusted": trusted,
        "verdict": (
            "separates the physician answers from an off-topic one"
            if trusted
            else f"TOO WEAK to rank policies (needs separation >= {MIN_SEPARATION} and ideal wins >= "
            f"{MIN_WIN_RATE:.0%}); use a stronger judge (judge=openai against a larger model)"
        ),
    }


# ---------------------------------------------------------------------------------------------- report
def _stat(s: dict[str, Any]) -> str:
    return f"{s['score']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] (n={s['n']})"


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.0%}"


def markdown(result: dict[str, Any], check: dict[str, Any] | None = None) -> str:
    """The report section: score, axes, themes, triage, judge check."""
    overall = {
        "score": result["overall"],
        "ci_low": result["ci_low"],
        "ci_high": result["ci_high"],
        "n": result["n"],
    }
    lines = [
        "## HealthBench",
        "",
        f"Judge: {result.get('judge', '?')}; grader {result.get('grader', '?')}, template {result.get('template', '?')}.",
        f"Score {_stat(overall)}, bootstrap 95% interval over examples; met signed points over positive "
        f"points, mean clipped to [0, 1]. {result['ungraded']} of {result['criteria']} criteria ungraded "
        "(counted as not met).",
        "",
        "| axis | score [95% CI] (n) |",
        "|---|---|",
        *[f"| {a} | {_stat(s)} |" for a, s in result["axes"].items()],
        "",
        "| theme | score [95% CI] (n) |",
        "|---|---|",
        *[f"| {t} | {_stat(s)} |" for t, s in result["themes"].items()],
    ]
    triage = result.get("triage")
    if triage:
        lines += [
            "",
            "Triage against the physician-agreed category (sent = the answer directs to emergency care now, "
            "scorers/triage.py; rubric = the physicians' emergency-behaviour criterion met):",
            "",
            "| category | n | sent to emergency care | rubric met / graded |",
            "|---|---|---|---|",
            *[
                f"| {c} | {r['n']} | {r['sent_to_emergency']} | {r['rubric_met']} / {r['rubric_graded']} |"
                for c, r in triage["categories"].items()
            ],
            "",
            f"Under-triage (emergent, not sent): {_pct(triage.get('under_triage', math.nan))}; by the rubric "
            f"{_pct(triage.get('under_triage_rubric', math.nan))}. Over-triage (non-emergent, sent): "
            f"{_pct(triage.get('over_triage', math.nan))}; by the rubric {_pct(triage.get('over_triage_rubric', math.nan))}.",
        ]
    if check:
        lines += [
            "",
            f"Judge check on {check['n']} examples: physician ideal answers {check['ideal']:.3f}, off-topic answer "
            f"{check['poor']:.3f}; separation {check['separation']:.3f} [{check['separation_ci'][0]:.3f}, "
            f"{check['separation_ci'][1]:.3f}], ideal above poor on {check['ideal_wins']:.0%}: {check['verdict']}.",
        ]
    return "\n".join(lines) + "\n"
