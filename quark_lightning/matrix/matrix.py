"""The alignment matrix: named dimensions, each in one of the paper's four categories.

Every dimension closes the paper's loop *observable metric -> attributable diagnosis -> optimizable
reward*: its scorer returns a per-sample score (the reward, NaN = not applicable) **and** findings
(the diagnosis: which rubric item was missed, which format rule was broken, which red flag ignored).
`AlignmentMatrix.score` runs every dimension over a batch and returns the (N, K) score matrix that the
aggregation turns into one scalar reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from quark_lightning.errors import QuarkError
from quark_lightning.rewards.base import Scorer, ScoreResult

CATEGORIES = ("fundamental", "expert", "online", "format")


class MatrixConfigError(QuarkError, ValueError):
    """A dimension of the matrix is declared wrongly."""


GATE_MODES = ("cap", "set")


@dataclass
class Gate:
    """Hard veto (interpretation of the team's multiplicative gates): a completion whose raw score on
    the dimension is below `below` gets total reward min(reward, value) (`cap`) or exactly `value`
    (`set`). `value` is in the aggregator's units (raw for `sum`, reference std units for `rfn*`)."""

    below: float
    mode: str = "cap"
    value: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict, where: str) -> Gate:
        unknown = set(cfg) - {"below", "mode", "value"}
        if unknown or "below" not in cfg:
            raise MatrixConfigError(f"{where}: gate needs {{below, mode, value}}, got keys {sorted(cfg)}")
        gate = cls(below=float(cfg["below"]), mode=cfg.get("mode", "cap"), value=float(cfg.get("value", 0.0)))
        if gate.mode not in GATE_MODES:
            raise MatrixConfigError(f"{where}: gate.mode {gate.mode!r} is not one of {GATE_MODES}")
        return gate


@dataclass
class Dimension:
    name: str
    category: str
    scorer: Scorer
    weight: float = 1.0
    risk: float = 1.0  # prior risk level (safety-critical dimensions higher)
    target: float | None = None  # score the dimension should reach; used by diagnosis/weighting
    gate: Gate | None = None  # a veto: a score below `gate.below` caps or sets the total reward

    def __post_init__(self) -> None:
        where = f"matrix dimension '{self.name}'"
        if isinstance(self.gate, dict):
            self.gate = Gate.from_config(self.gate, where)
        if self.category not in CATEGORIES:
            raise MatrixConfigError(
                f"{where}: category {self.category!r} is unknown; expected one of {', '.join(CATEGORIES)}"
            )
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight >= 0):
            raise MatrixConfigError(f"{where}: weight must be a finite number >= 0, got {self.weight!r}")
        if not (isinstance(self.risk, (int, float)) and self.risk > 0):
            raise MatrixConfigError(f"{where}: risk must be a number > 0, got {self.risk!r}")
        if not callable(getattr(self.scorer, "score", None)):
            raise MatrixConfigError(
                f"{where}: scorer {type(self.scorer).__name__} has no score(prompts, completions) method"
            )


@dataclass
class MatrixScores:
    names: list[str]
    scores: torch.Tensor  # (N, K) raw scores, NaN = not applicable
    findings: dict[str, list[list[str]]] = field(default_factory=dict)  # name -> per-sample findings

    def column(self, name: str) -> torch.Tensor:
        return self.scores[:, self.names.index(name)]


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

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def categories(self) -> dict[str, str]:
        return {d.name: d.category for d in self.dimensions}

    def weights(self) -> torch.Tensor:
        return torch.tensor([d.weight for d in self.dimensions], dtype=torch.float32)  # (K,)

    def gates(self) -> list[tuple[int, Gate]]:
        return [(k, d.gate) for k, d in enumerate(self.dimensions) if d.gate is not None]

    def torch_modules(self) -> dict[str, torch.nn.Module]:
        """Learned reward models held by scorers (frozen; registered beside the policy)."""
        out = {}
        for dim in self.dimensions:
            module = getattr(dim.scorer, "model", None)
            if isinstance(module, torch.nn.Module):
                out[dim.name] = module
        return out

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> MatrixScores:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        columns, findings = [], {}
        for dim in self.dimensions:
            result: ScoreResult = dim.scorer.score(prompts, completions)
            if result.scores.shape != (len(completions),):
                raise ValueError(
                    f"scorer of dimension '{dim.name}' returned shape {tuple(result.scores.shape)}, "
                    f"expected ({len(completions)},)"
                )
            columns.append(result.scores.float())
            findings[dim.name] = result.findings
        return MatrixScores(names=self.names, scores=torch.stack(columns, dim=1), findings=findings)
