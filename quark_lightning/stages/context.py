"""What the pipeline's pieces share: a configured stage (`StageSpec`), a finished one (`StageRecord`)
and the run so far (`PipelineContext`).

Its own module so that the runner, the stage kinds (stages.py), the summary and the export all import
these types without importing each other (the runner imports the stage kinds, which import the export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig


@dataclass
class StageSpec:
    name: str
    kind: str
    options: DictConfig  # the stage's config block as written (what its fingerprint hashes)
    settings: Any  # the same block as its kind's typed settings (stages/stage_settings.py), what the stage reads


@dataclass
class StageRecord:
    """What a finished (or skipped) stage left for the ones after it."""

    name: str
    kind: str
    dir: str
    status: str  # ran | resumed | skipped
    outputs: dict[str, Any]
    seconds: float
    fingerprint: str


@dataclass
class PipelineContext:
    cfg: DictConfig  # the root (composed) config
    root: str
    records: dict[str, StageRecord] = field(default_factory=dict)  # earlier stages, in order

    def latest(self, key: str, kinds: tuple[str, ...] | None = None) -> StageRecord | None:
        """The most recent earlier stage whose outputs hold `key` (optionally of the given kinds)."""
        for rec in reversed(list(self.records.values())):
            if key in rec.outputs and (kinds is None or rec.kind in kinds):
                return rec
        return None

    def of_kind(self, kind: str) -> list[StageRecord]:
        return [r for r in self.records.values() if r.kind == kind]
