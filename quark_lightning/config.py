"""Validation of the composed Hydra config, before anything heavy starts.

Each check names the key, what was expected, what was found, and how to fix it; all problems are
reported at once as one `ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quark_lightning.algorithms.grpo_loss import LOSS_REDUCTIONS
from quark_lightning.errors import ConfigError
from quark_lightning.matrix import CATEGORIES
from quark_lightning.models.loading import DTYPES
from quark_lightning.optim.advantages import SCALE_MODES
from quark_lightning.optim.aggregation import AGGREGATORS

Check = Callable[[Any], bool]


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


def _require(problems: list[str], cfg: DictConfig, key: str, ok: Check, expected: str, fix: str = "") -> None:
    value = _get(cfg, key)
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        hint = f" Fix: {fix}" if fix else f" Fix: pass {key}=<{expected}>."
        problems.append(f"{key}: got {value!r}, expected {expected}.{hint}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every wrong value of the training config."""
    p: list[str] = []
    missing = sorted(OmegaConf.missing_keys(cfg)) if hasattr(OmegaConf, "missing_keys") else []
    for key in missing:
        if not key.startswith("hydra"):
            p.append(f"{key}: required but not set (???). Fix: pass {key}=<value> on the command line.")
    # model
    _require(
        p, cfg, "model.kind", lambda v: v in ("tiny", "hf"), "'tiny' or 'hf'", "use model=tiny or model=hf."
    )
    if _get(cfg, "model.kind") == "hf" and "model.name_or_path" not in missing:
        _require(
            p,
            cfg,
            "model.name_or_path",
            lambda v: isinstance(v, str) and v,
            "a hub name or a local directory",
        )
    _require(p, cfg, "model.dtype", lambda v: v in DTYPES, f"one of {sorted(DTYPES)}")
    if _get(cfg, "model.lora.enabled"):
        _require(p, cfg, "model.lora.r", lambda v: is_int(v) and v > 0, "a positive integer")
    # data
    _require(p, cfg, "data.prompts_per_step", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(p, cfg, "data.val_fraction", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
    # algorithm
    _require(
        p,
        cfg,
        "algorithm.num_generations",
        lambda v: is_int(v) and v >= 2,
        "an integer >= 2 (GRPO compares completions within a group)",
    )
    _require(
        p, cfg, "algorithm.loss_type", lambda v: v in LOSS_REDUCTIONS, f"one of {sorted(LOSS_REDUCTIONS)}"
    )
    _require(p, cfg, "algorithm.beta", lambda v: is_num(v) and v >= 0, "a number >= 0")
    _require(p, cfg, "algorithm.epsilon", lambda v: is_num(v) and 0 < v < 1, "a number in (0, 1)")
    _require(
        p, cfg, "algorithm.epsilon_high", lambda v: v is None or (is_num(v) and v > 0), "null or a number > 0"
    )
    _require(p, cfg, "algorithm.num_iterations", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(p, cfg, "algorithm.scale_rewards", lambda v: v in SCALE_MODES, f"one of {list(SCALE_MODES)}")
    _require(
        p,
        cfg,
        "algorithm.micro_batch_size",
        lambda v: v is None or (is_int(v) and v >= 1),
        "null or an integer >= 1",
    )
    _require(
        p,
        cfg,
        "algorithm.max_grad_norm",
        lambda v: v is None or (is_num(v) and v > 0),
        "null or a number > 0",
    )
    _require(p, cfg, "algorithm.lr", lambda v: is_num(v) and v > 0, "a learning rate > 0")
    # rollout
    _require(p, cfg, "rollout.max_new_tokens", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(p, cfg, "rollout.temperature", lambda v: is_num(v) and v > 0, "a number > 0")
    _require(p, cfg, "rollout.top_p", lambda v: is_num(v) and 0 < v <= 1, "a number in (0, 1]")
    # optimization
    _require(p, cfg, "optimization.aggregator", lambda v: v in AGGREGATORS, f"one of {sorted(AGGREGATORS)}")
    # warm start
    if _get(cfg, "warmstart.enabled"):
        _require(p, cfg, "warmstart.steps", lambda v: is_int(v) and v >= 1, "an integer >= 1")
        _require(p, cfg, "warmstart.lr", lambda v: is_num(v) and v > 0, "a number > 0")
    # trainer
    _require(p, cfg, "trainer.max_steps", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    # matrix
    dims = _get(cfg, "matrix.dimensions")
    if not isinstance(dims, DictConfig) or len(dims) == 0:
        p.append(
            "matrix.dimensions: expected a mapping of dimension name -> {category, weight, scorer}. "
            "Fix: pick a matrix with matrix=demo or declare dimensions in conf/matrix/."
        )
    else:
        for name, dim in dims.items():
            key = f"matrix.dimensions.{name}"
            if dim is None:
                continue  # removed with matrix.dimensions.NAME=null
            _require(p, cfg, f"{key}.category", lambda v: v in CATEGORIES, f"one of {list(CATEGORIES)}")
            _require(p, cfg, f"{key}.weight", lambda v: is_num(v) and v >= 0, "a number >= 0")
            _require(p, cfg, f"{key}.risk", lambda v: v is None or (is_num(v) and v > 0), "a number > 0")
            _require(
                p,
                cfg,
                f"{key}.scorer._target_",
                lambda v: isinstance(v, str) and "." in v,
                "the dotted path of a scorer class",
                f"set {key}.scorer._target_ to e.g. quark_lightning.rewards.format.FormatScorer.",
            )
    if p:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(p))
