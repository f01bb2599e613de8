"""Item-level actions of the closed loop: pure functions from observed answers to new weights + actions.

Each function takes the current weights and what one evaluation observed, and returns the new weights and
the actions (dicts with `kind`, `target`, `value`, `evidence` = the ids of the answers that triggered it,
and a human `reason`). The callback (callbacks/closed_loop.py) stores the result in RewardShaping's
`LoopState` (loop/loop_state.py), which hands it to the scorers and the sampler and is saved with the module. Every weight is bounded by `cap` and goes back to 1 (and
out of the dictionaries) as soon as the failure behind it stops, so the loop undoes what no longer helps.

Interpretation (the paper names the loop "observable metric -> attributable diagnosis -> optimizable
reward", not its rules):

- rubric items: held-out prompts are never trained on, so a held-out miss cannot re-weight an item that
  training sees. The loop therefore also answers a probe of *training* prompts (greedy, outside any
  gradient step) and re-weights the items of those prompts, keyed by (prompt id, item id):
    essential missed              w <- min(cap, w + gain)         (grows while the policy keeps missing it)
    pitfall hit                   w <- min(cap, w + gain)
    important / highlight missed  w <- min(cap, w + gain / 2), only when every essential of the answer is
                                  met ("essentials first"); unchanged while an essential is still missed
    met (pitfall: not hit)        w <- 1
  The rubric score counts an item's points times w (scorers/rubric.py), so an answer that keeps missing
  the item scores lower, one that meets it relatively higher.
- format rules: for a failing format dimension, each rule's weight inside the format score becomes
  1 + `gain` * (share of held-out answers breaking it); back to 1 once it is no longer broken, or when the
  dimension passes.
- prompt sampling: a probed training prompt whose answer fails a gate (for example triage: a red flag
  ignored) is drawn 1 + `gain` times as often as its area peers (data/datamodule.py AreaWeightedSampler),
  back to 1 once its answer clears every gate.
"""

from __future__ import annotations

from typing import Any

Outcome = tuple[dict[str, Any], "bool | None"]  # (rubric item, met; None = the matcher failed)


def _raised(old: float, step: float, cap: float) -> float:
    return min(cap, old + step)


def rubric_item_weights(
    current: dict[str, dict[str, float]],
    outcomes: dict[str, list[Outcome]],
    failing: bool,
    gain: float,
    cap: float,
    dimension: str = "expert_rubric",
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """New {prompt id: {item id: weight}} from the probe's (item, met) outcomes per prompt id.

    `failing`: the rubric dimension is below its pass target on the held-out split; when it is not, every
    weight goes back to 1 (the dimension passes: nothing to push). Prompts not in `outcomes` keep theirs."""
    if not failing:
        count = sum(len(items) for items in current.values())
        reset = {
            "kind": "rubric_item_weight",
            "target": f"{dimension}.*",
            "value": 1.0,
            "evidence": sorted(current),
            "reason": f"{dimension} passes its target: {count} item weight(s) back to 1",
        }
        return {}, [reset] if count else []
    new = {p: dict(items) for p, items in current.items()}
    actions = []
    for pid, items in outcomes.items():
        old = current.get(pid, {})
        essentials_met = all(met is not False for item, met in items if item["type"] == "essential")
        weights = {}
        for item, met in items:
            iid, kind, w = str(item.get("id")), item["type"], old.get(str(item.get("id")), 1.0)
            if met is None:  # the matcher failed on it: no evidence either way
                weights[iid] = w
            elif kind in ("essential", "pitfall"):
                bad = (not met) if kind == "essential" else met
                weights[iid] = _raised(w, gain, cap) if bad else 1.0
            elif met:
                weights[iid] = 1.0
            else:
                weights[iid] = _raised(w, gain / 2, cap) if essentials_met else w
            if abs(weights[iid] - w) > 1e-9:
                actions.append(_rubric_action(dimension, pid, item, met, w, weights[iid]))
        new[pid] = {i: w for i, w in weights.items() if w != 1.0}
        if not new[pid]:
            del new[pid]
    return new, actions


def _rubric_action(dimension, pid, item, met, old, weight) -> dict[str, Any]:
    kind, text = item["type"], item.get("text", "")
    if kind == "pitfall":
        why = "the probe answer hits it" if met else "the probe answer no longer hits it"
    else:
        why = "the probe answer misses it" if not met else "the probe answer meets it"
    return {
        "kind": "rubric_item_weight",
        "target": f"{dimension}.{pid}.{item.get('id')}",
        "value": weight,
        "evidence": [pid],
        "reason": f"{dimension} {kind} '{text}' ({item.get('id')} of {pid}): {why}; item weight "
        f"{old:.2f} -> {weight:.2f}",
    }


def prompt_sampling_weights(
    current: dict[str, float],
    gate_failures: dict[str, list[str]],
    gain: float,
    gates: list[str] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """New {prompt id: sampling multiplier} from the probe: prompt id -> the gated dimensions its answer
    failed ([] = it cleared every gate). Prompts not probed keep their multiplier. Each action names the
    gated dimension it serves (`dimension`: the first failed gate, else the first of `gates`)."""
    new = dict(current)
    actions = []
    for pid, failed in gate_failures.items():
        old = current.get(pid, 1.0)
        weight = 1.0 + gain if failed else 1.0
        if weight != 1.0:
            new[pid] = weight
        else:
            new.pop(pid, None)
        if abs(weight - old) > 1e-9:
            why = (
                f"its probe answer failed the {', '.join(failed)} gate"
                if failed
                else "its probe answer clears every gate again"
            )
            actions.append(
                {
                    "kind": "prompt_sampling",
                    "target": pid,
                    "dimension": failed[0] if failed else (gates or [None])[0],
                    "value": weight,
                    "evidence": [pid],
                    "reason": f"training prompt {pid}: {why}; drawn {weight:.2f}x as often as its area "
                    f"peers (was {old:.2f}x)",
                }
            )
    return new, actions


def format_rule_weights(
    current: dict[str, float],  # rule -> weight in use (every rule of the scorer)
    broken: dict[str, list[str]],  # rule -> ids of the held-out answers that broke it
    n_answers: int,
    failing: bool,
    gain: float,
    dimension: str = "format_rules",
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """New {rule: weight} for one format dimension from one held-out evaluation, and an action per change."""
    n = max(1, n_answers)
    new = {r: 1.0 + gain * len(broken.get(r, [])) / n if failing else 1.0 for r in current}
    actions = []
    for rule, weight in new.items():
        if abs(weight - current[rule]) <= 1e-6:
            continue
        ids = broken.get(rule, [])
        if ids and failing:
            why = f"broken by {len(ids)} of {n} held-out answers ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
        else:
            why = "no longer broken" if failing else f"{dimension} passes its target"
        actions.append(
            {
                "kind": "format_rule_weight",
                "target": f"{dimension}.{rule}",
                "value": weight,
                "evidence": ids,
                "reason": f"{dimension} rule '{rule}': {why}; rule weight {current[rule]:.2f} -> {weight:.2f}",
            }
        )
    return new, actions
