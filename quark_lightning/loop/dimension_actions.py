"""The closed loop's per-dimension and per-area actions, as pure functions of one evaluation's metrics.

    loop_gains          per dimension: g_k = 1 + gain_strength * (1 - pass_rate_k) below `pass_target`,
                        1 at or above it; a failing dimension whose held-out mean stayed within
                        `min_change` over `patience` evaluations decays toward 1 instead ("letting go")
    curriculum_weights  per clinical area: (1 - pass_rate_area + curriculum_floor) ** curriculum_strength

Each returns the new values and the actions that explain every change (the callback applies them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quark_lightning.loop.loop_settings import LoopSettings


def failing(metrics: dict[str, Any], name: str, pass_target: float) -> bool:
    """The dimension's held-out pass rate is below target (NaN, not applicable, never fails)."""
    rate = metrics["dimensions"][name]["pass_rate"]
    return rate == rate and rate < pass_target


def not_moving(means: Sequence[float], patience: int, min_change: float) -> str | None:
    """Why a dimension counts as not responding: its held-out means of the last `patience` evaluations
    (this one included) lie within `min_change`; None when it moves or there are fewer evaluations."""
    window = list(means)[-patience:]
    if len(window) < patience or any(m != m for m in window):
        return None
    if max(window) - min(window) >= min_change:
        return None
    return f"its held-out mean stayed within {min(window):.3f}..{max(window):.3f} over {patience} evaluations"


def loop_gains(
    names: Sequence[str],
    metrics: dict[str, Any],
    old: Sequence[float],  # (K,) the gains in use
    means: dict[str, list[float]],  # dimension -> held-out means, this evaluation's last
    settings: LoopSettings,
) -> tuple[list[float], list[dict[str, Any]]]:
    """(K,) the next loop gains and an action per changed gain."""
    top: dict[str, dict] = {}
    for d in metrics["diagnosis"]:
        top.setdefault(d["dimension"], d)
    new, actions = [], []
    for k, name in enumerate(names):
        rate = metrics["dimensions"][name]["pass_rate"]
        fails = failing(metrics, name, settings.pass_target)
        gain = 1.0 + settings.gain_strength * (1.0 - rate) if fails else 1.0
        stuck = not_moving(means.get(name, []), settings.patience, settings.min_change) if fails else None
        if stuck is not None:  # below target but not responding: let go of it
            gain = 1.0 + (old[k] - 1.0) * settings.gain_decay
        new.append(gain)
        if abs(gain - old[k]) <= 1e-6:
            continue
        if fails:
            why = f"held-out pass rate {rate:.2f} < {settings.pass_target:.2f}"
        else:
            why = f"held-out pass rate {rate:.2f} >= {settings.pass_target:.2f}: stops being pushed"
        if stuck is not None:
            why += f", but {stuck}: gain decayed toward 1"
        elif fails and name in top:
            why += f" (top finding '{top[name]['finding']}', {top[name]['share']:.0%} of answers)"
        reason = f"{name}: {why}; loop gain {old[k]:.2f} -> {gain:.2f}"
        actions.append({"kind": "loop_gain", "target": name, "value": gain, "reason": reason})
    return new, actions


def curriculum_weights(
    areas: Sequence[str], metrics: dict[str, Any], settings: LoopSettings
) -> dict[str, float]:
    """Each area's sampling weight; an area the held-out split did not cover gets the mean (neutral)."""
    weights = {}
    for area in areas:
        rate = metrics["areas"].get(area, {}).get("pass_rate")
        if rate is not None and rate == rate:
            weights[area] = (1.0 - rate + settings.curriculum_floor) ** settings.curriculum_strength
    neutral = sum(weights.values()) / len(weights) if weights else 1.0
    return {a: weights.get(a, neutral) for a in areas}


def share_actions(
    before: dict[str, float], after: dict[str, float], metrics: dict[str, Any]
) -> list[dict[str, Any]]:
    """An action per area whose sampling share moved by more than 0.01, largest share first."""
    actions = []
    for area in sorted(after, key=lambda a: -after[a]):
        if abs(after[area] - before[area]) <= 0.01:
            continue
        rate = metrics["areas"].get(area, {}).get("pass_rate", float("nan"))
        why = f"held-out pass rate {rate:.2f}" if rate == rate else "not in the held-out sample (neutral)"
        reason = f"{area}: {why}; sampling share {before[area]:.2f} -> {after[area]:.2f}"
        actions.append({"kind": "sampling", "target": area, "value": after[area], "reason": reason})
    return actions
