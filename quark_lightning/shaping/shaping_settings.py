"""The `optimization` group's two settings nodes as typed settings (config/typed.py): Reference-Frozen
Normalization (`optimization.normalization`, shaping/rfn.py and its calibration) and TADW
(`optimization.weighting`, shaping/tadw.py). `RewardShaping` builds its normalizer and its weighting from
these, and the config check reads the same declarations, so each key's rule is written once. The defaults
are the classes' own (what `RewardShaping.with_defaults` gives); conf/optimization/*.yaml sets the run's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from quark_lightning.config.typed import boolean, integer, number, one_of, optional, setting

NORMALIZATION_MODES = ("global", "per_prompt")  # shaping/rfn.py reads these lists
WEAKNESS_MODES = ("softmax", "target_gap")  # and shaping/tadw.py
FALLBACKS = ("bernoulli",)


def fallback_std(value: Any) -> bool:
    return value in FALLBACKS or (number(0, low_open=True)(value))


def dimension_names(value: Any) -> bool:
    """null, all (or true / false), or a list of dimension names (checked against the matrix when built)."""
    if value is None or isinstance(value, bool) or value == "all":
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def text_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


@dataclass(frozen=True)
class NormalizationSettings:
    """optimization.normalization: the frozen statistics' settings and how they are calibrated."""

    # the normalizer (ReferenceFrozenNormalizer)
    mode: str = setting("global", one_of(NORMALIZATION_MODES), f"one of {NORMALIZATION_MODES}")
    clip: float | None = setting(5.0, optional(number(0, low_open=True)), "null or a number > 0")
    eps: float = setting(1e-6, number(0, low_open=True), "a number > 0")
    min_count: int = setting(8, integer(0), "an integer >= 0 (fewer scored samples: status sparse)")
    min_std: float = setting(1e-6, number(0), "a number >= 0")
    fallback_std: float | str = setting(1.0, fallback_std, "bernoulli or a number > 0")
    length_decoupled: Any = setting(None, dimension_names, "null, all, or a list of the matrix's dimension names")
    # calibration (callbacks/reward_rescaling.py)
    calibration_prompts: int = setting(32, integer(1), "an integer >= 1")
    num_generations: int | None = setting(None, optional(integer(1)), "null (algorithm.num_generations) or >= 1")
    recalibrate: bool = setting(False, boolean, "true or false")
    report_path: str | None = setting(None, text_or_null, "null or a file path")
    statistics_path: str | None = setting(None, text_or_null, "null or the directory of saved statistics")

    def normalizer_kwargs(self) -> dict[str, Any]:
        """`ReferenceFrozenNormalizer`'s keyword arguments but `length_decoupled` (flags per dimension)."""
        keys = ("mode", "clip", "eps", "min_count", "min_std", "fallback_std")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class WeightingSettings:
    """optimization.weighting: Tri-Factor Adaptive Dynamic Weighting (`TriFactorWeighting`'s arguments
    but the matrix's risk levels, targets and static weights)."""

    weakness: bool = setting(True, boolean, "true or false")  # each factor can be ablated
    risk_priority: bool = setting(True, boolean, "true or false")
    redundancy: bool = setting(True, boolean, "true or false")
    weakness_mode: str = setting("softmax", one_of(WEAKNESS_MODES), f"one of {WEAKNESS_MODES}")
    tau: float = setting(1.0, number(0, low_open=True), "a number > 0 (softmax temperature)")
    score_momentum: float = setting(0.1, number(0, 1), "a number in [0, 1]")
    alpha: float = setting(1.0, number(), "a number (exponent of the risk prior)")
    gamma: float = setting(1.0, number(0), "a number >= 0")
    high_risk: float = setting(3.0, number(), "a number (risk level)")
    corr_momentum: float = setting(0.1, number(0, 1), "a number in [0, 1]")
    corr_threshold: float = setting(0.0, number(-1, 1), "a number in [-1, 1]")
    eta: float = setting(0.1, number(0, 1), "a number in [0, 1] (smoothing of the weights)")
    w_min: float = setting(0.02, number(0, 1, low_open=True, high_open=True), "a number in (0, 1)")

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)
