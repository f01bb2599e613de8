"""The closed loop's settings (`callbacks.closed_loop.*` in conf/callbacks/), validated once when built.

Each key's rule is declared on its field and checked by config/typed.py: every value out of range is
reported at once, each as `callbacks.closed_loop.<key>: got X, expected Y. Fix: ...`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from quark_lightning.config.typed import boolean, check, integer, number, setting, typed

WHERE = "callbacks.closed_loop"


@dataclass(frozen=True)
class LoopSettings:
    every_n_steps: int = setting(10, integer(0), "an integer >= 0")  # held-out evaluation every N steps (0: start and end only)
    num_prompts: int = setting(16, integer(1), "an integer >= 1")  # held-out prompts per evaluation
    greedy: bool = setting(True, boolean, "true or false")
    pass_target: float = setting(0.9, number(0, 1), "a share in [0, 1]")  # a dimension passing less often is weak
    gain_strength: float = setting(1.0, number(0), "a number >= 0")  # per-dimension loop gain: 1 + strength * shortfall
    curriculum: bool = setting(True, boolean, "true or false")  # resample training areas by their held-out failures
    curriculum_strength: float = setting(1.0, number(0), "a number >= 0")
    curriculum_floor: float = setting(0.1, number(0), "a number >= 0")
    report_dir: str | None = None
    write_reports: bool = setting(True, boolean, "true or false")
    patience: int = setting(3, integer(2), "an integer >= 2 (evaluations)")  # evaluations without progress before a gain decays
    min_change: float = setting(0.02, number(0), "a number >= 0")
    gain_decay: float = setting(0.5, number(0, 1, high_open=True), "a number in [0, 1)")
    rule_gain: float = setting(1.0, number(0), "a number >= 0 (0 = off)")  # format rules: weight of a failing rule
    update: bool = setting(True, boolean, "true or false")  # False: observe and diagnose only
    item_level: bool = setting(True, boolean, "true or false")  # rubric items, format rules, prompts, mined phrases (False: dimensions only)
    probe_prompts: int = setting(8, integer(0), "an integer >= 0")  # training prompts probed per evaluation
    item_gain: float = setting(1.0, number(0), "a number >= 0 (0 = off)")
    max_item_weight: float = setting(3.0, number(1), "a number >= 1")
    prompt_gain: float = setting(2.0, number(0), "a number >= 0 (0 = off)")
    reference_targets: bool = setting(True, boolean, "true or false")  # judge reward-model dimensions against the prompt's reference answer
    max_mined_patterns: int = setting(8, integer(0), "an integer >= 0 (0 = off)")
    pattern_expiry: int = setting(2, integer(1), "an integer >= 1 (evaluations)")
    pattern_min_count: int = setting(3, integer(1), "an integer >= 1 (answers)")

    def __post_init__(self) -> None:
        check(self, WHERE)

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def of(cls, settings: dict[str, Any]) -> LoopSettings:
        """Built from keyword settings; an unknown key is named with the nearest valid one."""
        return typed(cls, settings, WHERE)

    @property
    def patterns(self) -> dict[str, int]:
        """The bad-phrase miner's settings (loop/patterns.py)."""
        return {"cap": self.max_mined_patterns, "expiry": self.pattern_expiry, "min_count": self.pattern_min_count}
