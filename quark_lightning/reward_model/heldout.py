"""Held-out evaluation of a reward model: its metrics, and the table of them before and after training.

Measured before and after training, printed, and saved in reward_model.json's summary: pair accuracy,
tie accuracy, mean |delta| on ties, pair margin, reward std, and the length-controlled accuracy: the
share of held-out preferred pairs whose rejected answer, padded with content-free filler
(quark_lightning/data/length_control.py, sentences never used in training data) to at least the
preferred answer's words + 50, still scores below the preferred answer. A reward model that mostly
measures length scores near 0 there however high its pair accuracy.
"""

from __future__ import annotations

import math

from quark_lightning.data.length_control import CONTROL_EXTRA_WORDS
from quark_lightning.reward_model.pair_datasets import evaluate_pairs
from quark_lightning.reward_model.rm_settings import RewardModelSettings

REPORTED = (
    ("pair_accuracy", "pair accuracy"),
    ("tie_accuracy", "tie accuracy"),
    ("tie_abs_delta", "mean |delta| on ties"),
    ("pair_margin", "pair margin"),
    ("reward_std", "reward std"),
    ("length_controlled_accuracy", "length-controlled acc."),
)


def held_out_metrics(model, held_set, control_set, rm: RewardModelSettings) -> dict[str, float]:
    """`evaluate_pairs` on the held-out pairs, plus `length_controlled_accuracy`: the pair accuracy on the
    length-control set (the share of held-out preferred pairs whose rejected answer, padded with filler
    to be 50+ words longer than the preferred one, still scores below it; NaN without preferred pairs)."""
    metrics = evaluate_pairs(model, held_set, rm.eval_batch_size, rm.tie_threshold)
    control = evaluate_pairs(model, control_set, rm.eval_batch_size, rm.tie_threshold)
    metrics["length_controlled_accuracy"] = control["pair_accuracy"]
    return metrics


def format_table(before: dict[str, float], after: dict[str, float]) -> str:
    def fmt(v: float) -> str:
        return "    n/a" if v is None or math.isnan(v) else f"{v:7.3f}"

    lines = [f"  {'':<22} {'before':>7} {'after':>7}"]
    lines += [f"  {label:<22} {fmt(before[k])} {fmt(after[k])}" for k, label in REPORTED]
    return "\n".join(lines)


def print_evaluation(
    rm: RewardModelSettings,
    mode: str,
    steps: int,
    held_pairs: int,
    before: dict[str, float],
    after: dict[str, float],
    train_seconds: float,
    feature_seconds: float,
) -> None:
    """The held-out metrics before and after training, and the headline ones."""
    lam = f"lambda={rm.ties_lambda}, m={rm.ties_margin}" + (
        ", literal paper form" if rm.literal_paper_form else ""
    )
    took = f"{train_seconds:.0f}s" + (f" + {feature_seconds:.0f}s of features" if mode == "frozen" else "")
    print(f"\nHeld-out evaluation ({held_pairs} pairs; {lam}; {steps} steps, {took}):")
    print(format_table(before, after))
    print(
        f"held-out pair accuracy: {after['pair_accuracy']:.3f}  "
        f"tie accuracy: {after['tie_accuracy']:.3f}  "
        f"mean |delta| on ties: {after['tie_abs_delta']:.3f}"
    )
    print(
        f"length-controlled accuracy: {after['length_controlled_accuracy']:.3f} (held-out rejected answers "
        f"padded with filler to >= the preferred answer's words + {CONTROL_EXTRA_WORDS} still score below it)"
    )
