"""Each stage kind's options (`pipeline.stages.<name>.*`, conf/pipeline/paradigm.yaml) as typed settings.

`STAGE_SETTINGS[kind]` declares the keys a stage of that kind takes, each with its rule (config/typed.py);
the runner builds every stage's settings before any stage runs (stages/runner.py: `stage_specs`), so an
unknown key or a wrong value in any stage stops the pipeline at once, naming the key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quark_lightning.config.lora_settings import LoraSettings
from quark_lightning.config.typed import boolean, integer, number, optional, required, setting, subgroup


def text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def non_empty_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) > 0


def strings(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(v, str) for v in value)


@dataclass(frozen=True)
class SFTStage:
    """kind: sft: supervised fine-tuning on the sources' examples (stages/sft.py, data/sft_sources.py)."""

    kind: str
    sources: Mapping[str, Any] = required(
        non_empty_mapping, "a mapping of SFT sources, e.g. {expert_references: {}}"
    )
    steps: int = setting(200, integer(1), "an integer >= 1 (optimizer steps)")
    batch_size: int = setting(8, integer(1), "an integer >= 1")
    lr: float = setting(3.0e-3, number(0, low_open=True), "a learning rate > 0")
    weight_decay: float = setting(0.0, number(0), "a number >= 0")
    warmup_steps: int = setting(10, integer(0), "an integer >= 0")
    max_length: int = setting(320, integer(16), "an integer >= 16 (tokens)")
    bucketing: bool = setting(True, boolean, "true or false")  # length-bucketed batches
    checkpoint_every: int = setting(50, integer(1), "an integer >= 1")
    lora: LoraSettings = subgroup(LoraSettings)


@dataclass(frozen=True)
class RewardModelStage:
    """kind: reward_model: train the reward model of an experiment (rm_orm, rm_online) for one dimension."""

    kind: str
    experiment: str = required(text, "an experiment name such as rm_orm")
    dimension: str = required(text, "the matrix dimension it scores")
    overrides: Sequence[str] = setting((), strings, "a list of overrides such as ['reward_model.steps=50']")


@dataclass(frozen=True)
class RFNCalibrationStage:
    """kind: rfn_calibration: the normalizer's statistics from the cloned policy's answers."""

    kind: str


@dataclass(frozen=True)
class GRPOStage:
    """kind: grpo: RL against the matrix; `overrides` are dotted keys for this stage only."""

    kind: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportStage:
    """kind: export: the policy as an HF directory with a model card (`merge`: also base + adapter merged)."""

    kind: str
    merge: bool | None = setting(True, optional(boolean), "true or false")


STAGE_SETTINGS: dict[str, type] = {
    "sft": SFTStage,
    "reward_model": RewardModelStage,
    "rfn_calibration": RFNCalibrationStage,
    "grpo": GRPOStage,
    "export": ExportStage,
}
