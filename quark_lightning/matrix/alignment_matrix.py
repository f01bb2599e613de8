"""The alignment matrix: named dimensions, each in one of the paper's four categories.

Every dimension closes the paper's loop *observable metric -> attributable diagnosis -> optimizable
reward*: its scorer returns a per-sample score (the reward, NaN = not applicable) **and** findings
(the diagnosis: which rubric item was missed, which format rule was broken, which red flag ignored).
`AlignmentMatrix.score` runs every dimension over a batch and returns the (N, K) score matrix that the
aggregation turns into one scalar reward. Each scorer runs under its dimension's `on_failure` policy
(matrix/guard.py): a sample whose scorer raised, hung or returned garbage is NaN in `scores` and True
in `failed`, so it is told apart from a sample the dimension does not apply to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from quark_lightning.config.typed import number, one_of, optional, rule, setting, value_problems
from quark_lightning.infra.errors import QuarkError
from quark_lightning.matrix.guard import FailurePolicy, ScorerGuard
from quark_lightning.scorers.interface import Scorer

CATEGORIES = ("fundamental", "expert", "online", "format")


class MatrixConfigError(QuarkError, ValueError):
    """A dimension of the matrix is declared wrongly."""


GATE_MODES = ("cap", "set")
GATE_FAILURE_ACTIONS = ("veto", "exclude")


@dataclass
class Gate:
    """Hard veto (interpretation of the team's multiplicative gates): a completion whose raw score on
    the dimension is below `below` gets total reward min(reward, value) (`cap`) or exactly `value`
    (`set`). `value` is in the aggregator's units (raw for `sum`, reference std units for `rfn*`).

    `on_failure` decides what happens when the gate dimension's scorer *failed* on a sample (see
    matrix/guard.py); a failed sample is never passed as if it had cleared the gate:
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
    on_failure: FailurePolicy | dict | None = None  # what a failing scorer does (matrix/guard.py)

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


@dataclass
class MatrixScores:
    names: list[str]
    scores: torch.Tensor  # (N, K) raw scores, NaN = not applicable
    findings: dict[str, list[list[str]]] = field(default_factory=dict)  # name -> per-sample findings
    failed: torch.Tensor | None = None  # (N, K) bool: the scorer failed on the sample (its score is NaN)
    errors: dict[str, str] = field(default_factory=dict)  # name -> last failure reason in this call

    def __post_init__(self) -> None:
        if self.failed is None:
            self.failed = torch.zeros(self.scores.shape, dtype=torch.bool)

    def column(self, name: str) -> torch.Tensor:
        return self.scores[:, self.names.index(name)]

    @property
    def failures(self) -> dict[str, int]:
        """Failed samples per dimension in this call (NaN scores that are failures, not "does not apply")."""
        return {name: int(self.failed[:, k].sum()) for k, name in enumerate(self.names)}


class AlignmentMatrix:
    """An ordered set of dimensions; scores a batch of (prompt, completion) pairs."""

    def __init__(self, dimensions: Sequence[Dimension]):
        if not dimensions:
            raise MatrixConfigError(
                "the matrix has no dimensions; declare at least one under `matrix.dimensions`"
            )
        seen: set[str] = set()
        for dim in dimensions:
            if dim.name in seen:
                raise MatrixConfigError(
                    f"matrix dimension '{dim.name}' is declared twice; names must be unique"
                )
            seen.add(dim.name)
        self.dimensions = list(dimensions)
        self.guards = {
            d.name: ScorerGuard(d.name, d.scorer, d.on_failure, d.gate.on_failure if d.gate else None)
            for d in self.dimensions
        }

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def categories(self) -> dict[str, str]:
        return {d.name: d.category for d in self.dimensions}

    def weights(self) -> torch.Tensor:
        return torch.tensor([float(d.weight) for d in self.dimensions])  # (K,) the run's float dtype

    def gates(self) -> list[tuple[int, Gate]]:
        return [(k, d.gate) for k, d in enumerate(self.dimensions) if d.gate is not None]

    def torch_modules(self) -> dict[str, torch.nn.Module]:
        """Learned reward models and in-process judge models held by scorers (frozen; registered beside
        the policy so Lightning puts them on each rank's device). A judge shared by several dimensions
        is registered once, as `judge_<first dimension using it>`."""
        out: dict[str, torch.nn.Module] = {}
        for dim in self.dimensions:
            module = getattr(dim.scorer, "model", None)
            if isinstance(module, torch.nn.Module):
                out[dim.name] = module
        for name, judge in self.judges().items():
            module = getattr(judge, "model", None)
            if isinstance(module, torch.nn.Module) and all(m is not module for m in out.values()):
                out[f"judge_{name}"] = module
        return out

    def judges(self) -> dict[str, Any]:
        """The LLM judges the scorers ask, by the first dimension using each (shared judges once)."""
        out: dict[str, Any] = {}
        for dim in self.dimensions:
            judge = getattr(dim.scorer, "llm_judge", None)
            if judge is not None and all(j is not judge for j in out.values()):
                out[dim.name] = judge
        return out

    def judge_stats(self) -> dict[str, int]:
        """Summed counters of every judge: requests sent, cache hits and misses, failed replies."""
        total = {"requests": 0, "cache_hits": 0, "cache_misses": 0, "failures": 0}
        for judge in self.judges().values():
            for key, value in judge.stats().items():
                total[key] = total.get(key, 0) + value
        return total

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> MatrixScores:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        columns, failed, findings, errors = [], [], {}, {}
        for dim in self.dimensions:
            result = self.guards[dim.name].score(prompts, completions)  # raises ScorerFailureError
            columns.append(result.scores)
            failed.append(result.failed)
            findings[dim.name] = result.findings
            if result.last_error is not None:
                errors[dim.name] = result.last_error
        return MatrixScores(
            names=self.names,
            scores=torch.stack(columns, dim=1),
            findings=findings,
            failed=torch.stack(failed, dim=1),
            errors=errors,
        )
