"""A LoRA adapter's settings (peft), one declaration for every group that has a `lora:` node: the policy
(`model.lora`), the reward model (`reward_model.lora`) and the pipeline's SFT stages
(`pipeline.stages.<sft>.lora`). Checked by config/typed.py under the node's dotted name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quark_lightning.config.typed import boolean, integer, number, setting


def target_modules(value: Any) -> bool:
    """peft's `target_modules`: `all-linear`, one module name, or a list of names."""
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) and v for v in value)


@dataclass(frozen=True)
class LoraSettings:
    enabled: bool = setting(False, boolean, "true or false")
    r: int = setting(8, integer(1), "a positive integer (the LoRA rank)")
    alpha: float = setting(16, number(0, low_open=True), "a positive number")
    dropout: float = setting(0.0, number(0, 1, high_open=True), "a number in [0, 1)")
    target_modules: Any = setting("all-linear", target_modules, "all-linear or a list of module names")
