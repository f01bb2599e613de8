"""The `warmstart` group (conf/warmstart/*.yaml): supervised fine-tuning on the reference answers before RL,
each key's rule declared once (config/typed.py). `warmstart=none` holds only `enabled: false`; the other keys
are checked when the warm start is on."""

from __future__ import annotations

from dataclasses import dataclass

from quark_lightning.config.typed import boolean, integer, number, setting

NODES = ("optimizer", "lr_scheduler")  # built by infra/optimizers.py, not settings


@dataclass(frozen=True)
class WarmstartSettings:
    enabled: bool = setting(False, boolean, "true or false")
    steps: int = setting(200, integer(1), "an integer >= 1")  # optimizer steps
    batch_size: int = setting(8, integer(1), "an integer >= 1")
    lr: float = setting(3.0e-3, number(0, low_open=True), "a number > 0")
    weight_decay: float = setting(0.0, number(0), "a number >= 0")
    warmup_steps: int = setting(10, integer(0), "an integer >= 0")
    max_length: int = setting(320, integer(8), "an integer >= 8 (tokens)")  # prompt + reference, tokens
