"""The `warmstart` group (conf/warmstart/*.yaml): supervised fine-tuning on the reference answers before RL,
each key's rule declared once (config/typed.py). `warmstart=none` holds only `enabled: false`; the other keys
are checked when the warm start is on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quark_lightning.config.typed import boolean, integer, number, rule

NODES = ("optimizer", "lr_scheduler")  # built by infra/optimizers.py, not settings


def _setting(default: Any, ok, expected: str) -> Any:
    return field(default=default, metadata=rule(ok, expected))


@dataclass(frozen=True)
class WarmstartSettings:
    enabled: bool = _setting(False, boolean, "true or false")
    steps: int = _setting(200, integer(1), "an integer >= 1")  # optimizer steps
    batch_size: int = _setting(8, integer(1), "an integer >= 1")
    lr: float = _setting(3.0e-3, number(0, low_open=True), "a number > 0")
    weight_decay: float = _setting(0.0, number(0), "a number >= 0")
    warmup_steps: int = _setting(10, integer(0), "an integer >= 0")
    max_length: int = _setting(320, integer(8), "an integer >= 8 (tokens)")  # prompt + reference, tokens
