"""What one row of the alignment matrix declares: its category, scorer, weight, risk and target, an
optional gate, and what a failing scorer does (its `on_failure` policy). Building a `Dimension` checks
every field; `AlignmentMatrix` (matrix/alignment_matrix.py) scores a batch with the rows.

`on_failure` (`matrix.on_failure` in `conf/matrix/*.yaml` is the default of every dimension;
`matrix.dimensions.NAME.on_failure` overrides single keys):

    policy            nan    a failed sample's score is NaN (the aggregators treat it as not applicable)
                      retry  call the scorer again on the failed samples, up to `retries` more times;
                             what still fails becomes NaN as with `nan`
                      stop   the first failure stops the run with a QuarkError
    retries           extra attempts with `retry` (ignored by the other policies)
    timeout_s         longest one scorer call (a batch, or one sample) may take; null = no limit
    max_failure_rate  a dimension failing on more than this fraction of one call's samples (after
                      retries) stops the run, naming the dimension; 1.0 or null = never
    nan_is_failure    true for a dimension that applies to every sample: a NaN it returns is a fault,
                      not "does not apply"
    max_hung_calls    how many timed-out calls of one scorer may still be running before further calls
                      fail at once instead of starting another thread

What counts as a failure and how a failing call is isolated: matrix/alignment_matrix.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quark_lightning.config.typed import number, one_of, optional, rule, setting, value_problems
from quark_lightning.infra.errors import ConfigError, QuarkError
from quark_lightning.scorers.interface import Scorer

CATEGORIES = ("fundamental", "expert", "online", "format")


class MatrixConfigError(QuarkError, ValueError):
    """A dimension of the matrix is declared wrongly."""


POLICIES = ("nan", "retry", "stop")
ON_FAILURE_KEYS = ("policy", "retries", "timeout_s", "max_failure_rate", "nan_is_failure", "max_hung_calls")


@dataclass(frozen=True)
class FailurePolicy:
    """How one dimension handles a failing scorer (see the module docstring)."""

    policy: str = "retry"
    retries: int = 1
    timeout_s: float | None = 300.0
    max_failure_rate: float | None = 0.5
    nan_is_failure: bool = False
    max_hung_calls: int = 4

    @classmethod
    def from_config(cls, cfg: Any, where: str) -> FailurePolicy:
        """Validate an `on_failure` mapping; errors name the key, the expectation and the fix."""
        return merged_policy(None, cfg, where)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "policy": (lambda v: v in POLICIES, f"one of {list(POLICIES)}"),
    "retries": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "timeout_s": (lambda v: v is None or (_is_num(v) and v > 0), "null or a number of seconds > 0"),
    "max_failure_rate": (lambda v: v is None or (_is_num(v) and 0 <= v <= 1), "null or a number in [0, 1]"),
    "nan_is_failure": (lambda v: isinstance(v, bool), "true or false"),
    "max_hung_calls": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "an integer >= 1",
    ),
}


def validate_on_failure(cfg: Any, where: str) -> list[str]:
    """Problems with one `on_failure` block, each as 'WHERE.on_failure.KEY: got X, expected Y. Fix: ...'."""
    if cfg is None:
        return []
    if not isinstance(cfg, Mapping):
        return [
            f"{where}.on_failure: got {cfg!r}, expected a mapping with keys {', '.join(ON_FAILURE_KEYS)}. "
            f"Fix: write it as {where}.on_failure: {{policy: retry, retries: 1, ...}}."
        ]
    problems = []
    for key in sorted(set(cfg) - set(ON_FAILURE_KEYS)):
        problems.append(f"{where}.on_failure.{key}: unknown key. Fix: use only {', '.join(ON_FAILURE_KEYS)}.")
    for key, (ok, expected) in _CHECKS.items():
        if key in cfg and not ok(cfg[key]):
            problems.append(
                f"{where}.on_failure.{key}: got {cfg[key]!r}, expected {expected}. "
                f"Fix: set {where}.on_failure.{key} to {expected}."
            )
    return problems


def merged_policy(matrix_level: Any, dimension_level: Any, where: str) -> FailurePolicy:
    """The dimension's policy: matrix-level defaults (`matrix.on_failure`), overridden key by key by the
    dimension's own block (`WHERE.on_failure`, WHERE = matrix.dimensions.NAME). Raises ConfigError."""
    problems = validate_on_failure(matrix_level, "matrix") + validate_on_failure(dimension_level, where)
    if problems:
        raise ConfigError("invalid on_failure policy:\n  - " + "\n  - ".join(problems))
    return FailurePolicy(**{**dict(matrix_level or {}), **dict(dimension_level or {})})


GATE_MODES = ("cap", "set")
GATE_FAILURE_ACTIONS = ("veto", "exclude")


@dataclass
class Gate:
    """Hard veto (interpretation of the team's multiplicative gates): a completion whose raw score on
    the dimension is below `below` gets total reward min(reward, value) (`cap`) or exactly `value`
    (`set`). `value` is in the aggregator's units (raw for `sum`, reference std units for `rfn*`).

    `on_failure` decides what happens when the gate dimension's scorer *failed* on a sample (see
    matrix/alignment_matrix.py); a failed sample is never passed as if it had cleared the gate:
      veto     (default) the sample is treated as below the threshold: its reward is capped / set (a
               sample with no other applicable dimension gets exactly `value`).
      exclude  the sample's reward becomes NaN, so its advantage is 0: neither rewarded nor punished.
               A sample vetoed by another gate stays vetoed.
    """

    below: float
    mode: str = "cap"
    value: float = 0.0
    on_failure: str = "veto"

    @classmethod
    def from_config(cls, cfg: dict, where: str) -> Gate:
        unknown = set(cfg) - {"below", "mode", "value", "on_failure"}
        if unknown or "below" not in cfg:
            raise MatrixConfigError(
                f"{where}: gate needs {{below, mode, value, on_failure}}, got keys {sorted(cfg)}"
            )
        gate = cls(
            below=float(cfg["below"]),
            mode=cfg.get("mode", "cap"),
            value=float(cfg.get("value", 0.0)),
            on_failure=cfg.get("on_failure", "veto"),
        )
        if gate.mode not in GATE_MODES:
            raise MatrixConfigError(f"{where}: gate.mode {gate.mode!r} is not one of {GATE_MODES}")
        if gate.on_failure not in GATE_FAILURE_ACTIONS:
            raise MatrixConfigError(
                f"{where}: gate.on_failure {gate.on_failure!r} is not one of {GATE_FAILURE_ACTIONS}"
            )
        return gate


@dataclass
class Dimension:
    """One row of the matrix: its scorer and how it counts. The rules of the plain keys are declared on the
    fields (config/typed.py), so building a Dimension and validating `matrix.dimensions.<name>` before a
    run apply the same ones."""

    name: str
    category: str = field(metadata=rule(one_of(CATEGORIES), f"one of {list(CATEGORIES)}"))
    scorer: Scorer
    weight: float = setting(1.0, number(0), "a number >= 0")
    risk: float = setting(1.0, number(0, low_open=True), "a number > 0")  # prior risk level (safety higher)
    # the score the dimension should reach; used by diagnosis and TADW's weakness factor
    target: float | None = setting(None, optional(number()), "null or a number (the score the dimension should reach)")
    gate: Gate | None = None  # a veto: a score below `gate.below` caps or sets the total reward
    on_failure: FailurePolicy | dict | None = None  # what a failing scorer does (above; applied by ScorerGuard)

    def __post_init__(self) -> None:
        where = f"matrix dimension '{self.name}'"
        if isinstance(self.gate, dict):
            self.gate = Gate.from_config(self.gate, where)
        if not isinstance(self.on_failure, FailurePolicy):
            self.on_failure = FailurePolicy.from_config(self.on_failure, f"matrix.dimensions.{self.name}")
        problems = value_problems(Dimension, self, f"matrix.dimensions.{self.name}")
        if len(problems) == 1:
            raise MatrixConfigError(problems[0])
        if problems:
            raise MatrixConfigError(f"invalid {where}:\n  - " + "\n  - ".join(problems))
        if not callable(getattr(self.scorer, "score", None)):
            raise MatrixConfigError(
                f"{where}: scorer {type(self.scorer).__name__} has no score(prompts, completions) method"
            )
