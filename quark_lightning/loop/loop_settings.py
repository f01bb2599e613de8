"""The closed loop's settings (`callbacks.closed_loop.*` in conf/callbacks/), validated once when built.

Every value out of range is reported at once, each as `callbacks.closed_loop.<key>: got X, expected Y`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_num(value: Any, low: float, high: float = float("inf"), high_open: bool = False) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return low <= value and (value < high if high_open else value <= high)


@dataclass(frozen=True)
class LoopSettings:
    every_n_steps: int = 10  # held-out evaluation every N steps (0: only at the start and the end)
    num_prompts: int = 16  # held-out prompts per evaluation
    greedy: bool = True
    pass_target: float = 0.9  # a dimension passing less often than this is weak
    gain_strength: float = 1.0  # per-dimension loop gain: 1 + strength * shortfall
    curriculum: bool = True  # resample training areas by their held-out failures
    curriculum_strength: float = 1.0
    curriculum_floor: float = 0.1
    report_dir: str | None = None
    write_reports: bool = True
    patience: int = 3  # evaluations without progress before a gain decays
    min_change: float = 0.02
    gain_decay: float = 0.5
    rule_gain: float = 1.0  # format rules: weight of a failing rule (0 = off)
    update: bool = True  # False: observe and diagnose only
    item_level: bool = True  # rubric items, format rules, prompts, mined phrases (False: dimensions only)
    probe_prompts: int = 8  # training prompts probed per evaluation (item-level prompt weights)
    item_gain: float = 1.0
    max_item_weight: float = 3.0
    prompt_gain: float = 2.0
    reference_targets: bool = True  # judge reward-model dimensions against the prompt's reference answer
    max_mined_patterns: int = 8
    pattern_expiry: int = 2
    pattern_min_count: int = 3

    def __post_init__(self) -> None:
        checks = {
            "every_n_steps": (_is_int(self.every_n_steps, 0), "an integer >= 0"),
            "num_prompts": (_is_int(self.num_prompts, 1), "an integer >= 1"),
            "pass_target": (_is_num(self.pass_target, 0, 1), "a share in [0, 1]"),
            "gain_strength": (_is_num(self.gain_strength, 0), "a number >= 0"),
            "curriculum_strength": (_is_num(self.curriculum_strength, 0), "a number >= 0"),
            "curriculum_floor": (_is_num(self.curriculum_floor, 0), "a number >= 0"),
            "patience": (_is_int(self.patience, 2), "an integer >= 2 (evaluations)"),
            "min_change": (_is_num(self.min_change, 0), "a number >= 0"),
            "gain_decay": (_is_num(self.gain_decay, 0, 1, high_open=True), "a number in [0, 1)"),
            "rule_gain": (_is_num(self.rule_gain, 0), "a number >= 0 (0 = off)"),
            "probe_prompts": (_is_int(self.probe_prompts, 0), "an integer >= 0"),
            "item_gain": (_is_num(self.item_gain, 0), "a number >= 0 (0 = off)"),
            "max_item_weight": (_is_num(self.max_item_weight, 1), "a number >= 1"),
            "prompt_gain": (_is_num(self.prompt_gain, 0), "a number >= 0 (0 = off)"),
            "max_mined_patterns": (_is_int(self.max_mined_patterns, 0), "an integer >= 0 (0 = off)"),
            "pattern_expiry": (_is_int(self.pattern_expiry, 1), "an integer >= 1 (evaluations)"),
            "pattern_min_count": (_is_int(self.pattern_min_count, 1), "an integer >= 1 (answers)"),
        }
        bad = [
            f"callbacks.closed_loop.{key}: got {getattr(self, key)!r}, expected {expected}"
            for key, (ok, expected) in checks.items()
            if not ok
        ]
        if bad:
            raise ValueError("; ".join(bad))

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def of(cls, settings: dict[str, Any]) -> LoopSettings:
        """Built from keyword settings; an unknown key is named with the valid ones."""
        unknown = sorted(set(settings) - cls.keys())
        if unknown:
            raise ValueError(
                f"callbacks.closed_loop: unknown key(s) {unknown}. Fix: use any of {sorted(cls.keys())}"
            )
        return cls(**settings)

    @property
    def patterns(self) -> dict[str, int]:
        """The bad-phrase miner's settings (loop/patterns.py)."""
        return {"cap": self.max_mined_patterns, "expiry": self.pattern_expiry, "min_count": self.pattern_min_count}
