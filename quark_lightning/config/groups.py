"""Validation of every config group a run uses, before anything heavy (data, model, reward models).

`config.validate_config` checks the ranges of single keys; this module checks the groups as wholes:

- unknown keys: every node with a `_target_` (rollout, callbacks, judge, logger, lr_scheduler, the
  scorers of the matrix) may only hold arguments its target accepts; a typo is named with the closest
  valid key ("callbacks.closed_loop.probe_promts: unknown key; did you mean probe_prompts?");
  `algorithm.*` may only hold GRPOConfig fields (plus lr_scheduler and optimizer), and
  `optimization.{normalization,weighting}` only the normalizer's / calibration's / TADW's settings;
- values: the light objects are built once here (callbacks, the normalizer and TADW on a one-dimension
  dummy), so their own range and enum checks run now; a ValueError/TypeError becomes a problem that names
  the group.

Every problem is collected and raised as one ConfigError (exit 2, no traceback, nothing loaded yet).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.typed import typed_problems, unknown_keys
from quark_lightning.grpo.grpo_config import ALGORITHM_NODES, GRPOConfig
from quark_lightning.infra.errors import ConfigError
from quark_lightning.matrix.dimension import Dimension
from quark_lightning.shaping.aggregation import AGGREGATORS
from quark_lightning.shaping.reward_shaping import DRIVERS
from quark_lightning.shaping.shaping_settings import NormalizationSettings, WeightingSettings


def accepted_arguments(target: Callable) -> set[str] | None:
    """The keyword arguments `target` accepts, or None when it takes **kwargs (anything goes). A class
    whose settings are a dataclass (`SETTINGS`, e.g. the closed loop's LoopSettings) accepts its fields;
    `BUILD_KEYS` are keys its builder consumes first (e.g. ORMScorer's reward model to train)."""
    settings = getattr(target, "SETTINGS", None)
    if dataclasses.is_dataclass(settings):
        return {f.name for f in dataclasses.fields(settings)}
    build_keys = set(getattr(target, "BUILD_KEYS", ()))
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"} | build_keys


def target_problems(node: Any, where: str) -> list[str]:
    """Unknown keys of a `_target_` node (a wrong `_target_` itself is reported too)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return []
    from hydra.utils import get_object

    try:
        target = get_object(str(node._target_))
    except Exception as err:  # noqa: BLE001 - any import failure is a config problem here
        return [
            f"{where}._target_: {node._target_!r} cannot be imported ({err}). Fix: a dotted path to a class"
        ]
    allowed = accepted_arguments(target)
    if allowed is None:
        return []
    return unknown_keys(list(node.keys()), allowed, where)


def _message(err: Exception, where: str) -> str:
    text = str(err).removeprefix("invalid configuration:\n  - ")
    return text if text.startswith(where) else f"{where}: {text}"


def build_problems(node: Any, where: str) -> list[str]:
    """Build a light `_target_` node once, so its own checks run; a failure becomes a problem."""
    from hydra.utils import instantiate

    try:
        instantiate(node)
    except Exception as err:  # noqa: BLE001 - the constructor's message names what is wrong
        cause = err.__cause__ or err  # Hydra wraps the constructor's error in InstantiationException
        return [_message(cause, where)]
    return []


def shaping_problems(optimization: DictConfig, active_dimensions: int = 1) -> list[str]:
    """optimization.{aggregator, normalization, weighting}: a combination that works, and the settings nodes
    as their dataclasses declare them (shaping/shaping_settings.py); `active_dimensions`: the matrix's
    dimensions with a weight > 0 (TADW's floor must fit them)."""
    spec = AGGREGATORS.get(optimization.get("aggregator"))
    if spec is None:
        return []  # validate_config names an unknown aggregator
    p: list[str] = []
    norm, weighting = optimization.get("normalization"), optimization.get("weighting")
    if spec.needs_normalizer and norm is None:
        p.append(
            f"optimization.normalization: null, but aggregator {optimization.aggregator} needs it. Fix: use "
            "optimization=rfn or optimization=rfn_tadw as a whole"
        )
    if spec.adaptive_weights and weighting is None:
        p.append(
            f"optimization.weighting: null, but aggregator {optimization.aggregator} adapts its weights. Fix: "
            "use optimization=rfn_tadw as a whole, or optimization=rfn for static weights"
        )

    control = optimization.get("length_control")
    if not (control is None or control == "all" or OmegaConf.is_list(control)):
        p.append(
            f"optimization.length_control: got {control!r}, expected null, all, or a list of the matrix's "
            "dimension names. Fix: e.g. optimization.length_control=all or '[correctness_macro,online_rm]'"
        )
    drivers = optimization.get("callbacks") or {}
    for prop, driver in DRIVERS.items():
        if getattr(spec, prop) and drivers.get(driver) is None:
            p.append(
                f"optimization.callbacks.{driver}: missing, but aggregator {optimization.aggregator} needs it "
                f"(it drives the reward shaping). Fix: use optimization={optimization.aggregator} as a whole"
            )
    for name, node in drivers.items():
        if node is not None:
            p += target_problems(node, f"optimization.callbacks.{name}")
    if spec.needs_normalizer and isinstance(norm, DictConfig):
        where = "optimization.normalization"
        p += typed_problems(NormalizationSettings, OmegaConf.to_container(norm, resolve=True), where)
    if spec.adaptive_weights and isinstance(weighting, DictConfig):
        where = "optimization.weighting"
        values = OmegaConf.to_container(weighting, resolve=True)
        found = typed_problems(WeightingSettings, values, where)
        w_min = values.get("w_min", WeightingSettings.w_min)
        if not found and not w_min * active_dimensions < 1:  # TADW floors every active weight at w_min
            found.append(
                f"{where}.w_min: got {w_min}, but {w_min} x {active_dimensions} active dimensions (weight > 0) "
                f"must be in (0, 1). Fix: pass {where}.w_min=<a number below {1 / max(active_dimensions, 1):.3g}>"
            )
        p += found
    return p


def algorithm_problems(algorithm: DictConfig) -> list[str]:
    allowed = [f.name for f in fields(GRPOConfig)] + list(ALGORITHM_NODES)
    p = unknown_keys(list(algorithm.keys()), allowed, "algorithm")
    if algorithm.get("lr_scheduler") is not None:
        p += target_problems(algorithm.lr_scheduler, "algorithm.lr_scheduler")
    if algorithm.get("optimizer") is not None:  # built by cli/run.py (infra/optimizers.py), so it must fit
        found = target_problems(algorithm.optimizer, "algorithm.optimizer")
        if found and "_target_" not in found[0].split(":")[0]:
            found.append(
                "algorithm.optimizer: a node given on the command line is merged into the shipped AdamW one "
                "(lr, weight_decay, betas). Fix: replace it whole with algorithm.optimizer=null "
                "'algorithm.optimizer={_target_: torch.optim.SGD, _partial_: true, lr: 0.01}', or drop a key "
                "with ~algorithm.optimizer.betas"
            )
        p += found
    return p


def group_problems(cfg: DictConfig) -> list[str]:
    """Every group of a GRPO run: unknown keys and the values the light objects check themselves."""
    p = algorithm_problems(cfg.algorithm)
    p += target_problems(cfg.get("rollout"), "rollout")
    p += shaping_problems(cfg.optimization, active_dimensions(cfg.matrix))
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None:
            where = f"callbacks.{name}"
            found = target_problems(node, where)
            p += found or build_problems(node, where)
    p += matrix_problems(cfg.matrix)
    return p


def active_dimensions(matrix: DictConfig) -> int:
    """The matrix's dimensions with a numeric weight > 0 (a wrong weight is named by config/validate.py)."""
    dims = matrix.get("dimensions") or {}
    weights = [dim.get("weight") for dim in dims.values() if isinstance(dim, DictConfig)]
    return sum(1 for w in weights if isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0)


def matrix_problems(matrix: DictConfig) -> list[str]:
    """Each dimension's keys (Dimension's fields) and its scorer's arguments."""
    allowed = [f.name for f in fields(Dimension) if f.name != "name"]
    p = []
    for name, dim in (matrix.get("dimensions") or {}).items():
        if not isinstance(dim, DictConfig):
            continue
        p += unknown_keys(list(dim.keys()), allowed, f"matrix.dimensions.{name}")
        if isinstance(dim.get("scorer"), DictConfig):
            p += target_problems(dim.scorer, f"matrix.dimensions.{name}.scorer")
    return p


def validate_groups(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of every group (see the module docstring)."""
    problems = group_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
