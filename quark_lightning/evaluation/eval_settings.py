"""`python evaluate.py`'s own keys (conf/evaluate.yaml, beside its model, data, matrix, rollout and judge
groups) as typed settings (config/typed.py): a wrong value exits 2 naming the key before any model loads.
The `healthbench` node is checked by evaluation/healthbench_section.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from quark_lightning.config.typed import (
    boolean,
    integer,
    optional,
    raise_problems,
    setting,
    typed,
    typed_problems,
)


def model_paths(value: Any) -> bool:
    """null, or a mapping name -> path (a null path: the configured model)."""
    if value is None:
        return True
    return isinstance(value, Mapping) and all(v is None or isinstance(v, str) for v in value.values())


@dataclass(frozen=True)
class EvaluationSettings:
    models: Mapping[str, str | None] | None = setting(
        None, model_paths, "a mapping name -> path", "e.g. models='{base: /m/base, rl: /m/rl}'"
    )
    limit: int | None = setting(32, optional(integer(1)), "a positive number of prompts (or null for all)")
    greedy: bool = setting(True, boolean, "true or false (false: sample with the rollout settings)")
    batch_size: int = setting(16, integer(1), "an integer >= 1 (prompts per generate call)")
    seed: int = setting(0, integer(), "an integer")
    heldout: bool = setting(False, boolean, "true or false")
    reward_state: str | None = setting(
        None, optional(lambda v: isinstance(v, str) and bool(v)), "null or a run's reward_state.json (or .ckpt)"
    )


def evaluation_settings(cfg: Any) -> EvaluationSettings:
    """The evaluation keys of a composed `evaluate` config (absent keys take their defaults)."""
    from omegaconf import OmegaConf

    values = {}
    for f in fields(EvaluationSettings):
        if f.name in cfg:
            value = cfg.get(f.name)
            values[f.name] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    # top-level keys: named as written (`limit: got 0, ...`)
    raise_problems(typed_problems(EvaluationSettings, values, ""), "evaluate")
    return typed(EvaluationSettings, values, "")
