"""Validation of the composed Hydra config, before anything heavy starts.

Each check names the key, what was expected, what was found, and how to fix it; all problems are
reported at once as one `ConfigError`.

Safe defaults checked here: `model.trust_remote_code` must be a real boolean (a string such as
"false" would otherwise count as true); model, adapter and checkpoint paths must exist before anything
is loaded, and with `HF_HUB_OFFLINE=1` a model must be a local directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.typed import (
    is_int,
    problem,
    require,
    typed_problems,
    unknown_keys,
    value_problems,
)
from quark_lightning.config.warmstart_settings import NODES as WARMSTART_NODES
from quark_lightning.config.warmstart_settings import WarmstartSettings
from quark_lightning.data.data_settings import data_problems
from quark_lightning.grpo.grpo_config import GRPOConfig
from quark_lightning.infra.errors import ConfigError
from quark_lightning.judges.settings import JudgeConfig
from quark_lightning.matrix.dimension import Dimension
from quark_lightning.models.model_settings import ModelSettings
from quark_lightning.models.weight_sources import is_builtin_source
from quark_lightning.rollout.rollout_settings import SamplingSettings
from quark_lightning.shaping.aggregation import AGGREGATORS


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every wrong value of the training config."""
    p: list[str] = []
    missing = sorted(OmegaConf.missing_keys(cfg)) if hasattr(OmegaConf, "missing_keys") else []
    for key in missing:
        if not key.startswith("hydra"):
            p.append(f"{key}: required but not set (???). Fix: pass {key}=<value> on the command line.")
    _model_problems(p, cfg, missing)
    _run_problems(p, cfg)
    p += rollout_problems(cfg)
    _algorithm_problems(p, cfg)
    _matrix_problems(p, cfg)
    _check_model_paths(p, cfg, missing)
    _check_more_ranges(p, cfg)
    _data_problems(p, cfg)
    p += judge_problems(cfg)
    if p:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(p))


def _model_problems(p: list[str], cfg: DictConfig, missing: list[str]) -> None:
    """model.*: every key as `ModelSettings` declares it (models/model_settings.py; unknown keys refused
    unless `_target_` is a source of your own), and the location model=hf needs."""
    model = _get(cfg, "model")
    if not isinstance(model, DictConfig):
        p.append("model: expected the model group. Fix: use model=tiny, model=smollm2 or model=hf.")
        return
    values = {k: None if f"model.{k}" in missing else _get(cfg, f"model.{k}") for k in model.keys()}
    if is_builtin_source(model):
        p += typed_problems(ModelSettings, values, "model")
    else:
        p += value_problems(ModelSettings, values, "model")
    if values.get("kind") == "hf" and "model.name_or_path" not in missing and not values.get("name_or_path"):
        p.append(problem("model.name_or_path", values.get("name_or_path"), "a hub name or a local directory"))


def _run_problems(p: list[str], cfg: DictConfig) -> None:
    """optimization.aggregator, warmstart.* (config/warmstart_settings.py), trainer.max_steps."""
    # optimization
    require(p, cfg, "optimization.aggregator", lambda v: v in AGGREGATORS, f"one of {sorted(AGGREGATORS)}")
    # warm start
    p += _warmstart_problems(cfg)
    # trainer
    require(p, cfg, "trainer.max_steps", lambda v: is_int(v) and v >= 1, "an integer >= 1")


def rollout_problems(cfg: DictConfig) -> list[str]:
    """rollout.*: every value as the engine's settings declare them (its `SETTINGS`, rollout/rollout_settings.py);
    an engine of your own without `SETTINGS` is checked on the sampling keys it shares. Unknown keys and a
    wrong `_target_`: config/groups.py."""
    from hydra.utils import get_object

    node = _get(cfg, "rollout")
    if not isinstance(node, DictConfig):
        return []
    try:
        settings = getattr(get_object(str(node.get("_target_"))), "SETTINGS", SamplingSettings)
    except Exception:  # noqa: BLE001 - reported by config/groups.py with the fix
        settings = SamplingSettings
    return value_problems(settings, OmegaConf.to_container(node, resolve=True), "rollout")


def _warmstart_problems(cfg: DictConfig) -> list[str]:
    """warmstart.*: unknown keys and, when it is on, every value as `WarmstartSettings` declares it."""
    warmstart = _get(cfg, "warmstart")
    if not isinstance(warmstart, DictConfig):
        return [] if warmstart is None else ["warmstart: expected a group. Fix: pass warmstart=none or warmstart=sft."]
    names = [f.name for f in fields(WarmstartSettings)]
    problems = unknown_keys(list(warmstart.keys()), [*names, *WARMSTART_NODES], "warmstart")
    if warmstart.get("enabled") is not True:
        return problems + value_problems(WarmstartSettings, {"enabled": warmstart.get("enabled", False)}, "warmstart")
    return problems + value_problems(WarmstartSettings, warmstart, "warmstart")


def _algorithm_problems(p: list[str], cfg: DictConfig) -> None:
    """algorithm.*: every value as `GRPOConfig` declares it (config/typed.py); unknown keys: config/groups.py."""
    algorithm = _get(cfg, "algorithm")
    if not isinstance(algorithm, DictConfig):
        p.append("algorithm: expected the GRPO settings group. Fix: pass algorithm=grpo.")
        return
    p += value_problems(GRPOConfig, algorithm, "algorithm")
    p += GRPOConfig.cross_key_problems(algorithm)


def _data_problems(p: list[str], cfg: DictConfig) -> None:
    """data.*: unknown keys, every value as `DataSettings` declares it, the split names and the column
    mapping (data/data_settings.py)."""
    data = _get(cfg, "data")
    if not isinstance(data, DictConfig):
        p.append("data: expected the prompts group. Fix: pass data=medical (or your own conf/data/NAME.yaml).")
        return
    p += data_problems(OmegaConf.to_container(data, resolve=True))


def _matrix_problems(p: list[str], cfg: DictConfig) -> None:
    """matrix.dimensions.*: each dimension's keys as `Dimension` declares them (category, weight, risk,
    target), and its scorer's target."""
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
            p += value_problems(Dimension, dim, key) if isinstance(dim, DictConfig) else []
            require(
                p,
                cfg,
                f"{key}.scorer._target_",
                lambda v: isinstance(v, str) and "." in v,
                "the dotted path of a scorer class",
                f"set {key}.scorer._target_ to e.g. quark_lightning.scorers.format.FormatScorer.",
            )


def judge_problems(cfg: DictConfig) -> list[str]:
    """The `judge` group's unknown keys and wrong values, as `JudgeConfig` declares them (checked even when
    no dimension asks the judge)."""
    judge = cfg.get("judge")
    if judge is None:
        return []

    if not isinstance(judge, DictConfig):
        return [f"judge: got {judge!r}, expected a mapping. Fix: choose it with judge=local or judge=openai."]
    names = [f.name for f in fields(JudgeConfig)]
    problems = unknown_keys(list(judge.keys()), names, "judge", " (see conf/judge/*.yaml)")
    return problems + value_problems(JudgeConfig, judge, "judge") + JudgeConfig.cross_key_problems(judge)


HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name or name


def is_local_path(value: str) -> bool:
    """Spelled as a path (absolute, ./, ../ or ~), so it must exist locally; `org/name` may be a hub name."""
    return value.startswith(("/", "./", "../", "~")) or os.path.exists(value)


def model_location_problem(value: str) -> str | None:
    """Why `value` cannot name a model (None when it can): a missing or non-directory local path, an
    invalid hub name, or a hub name while HF_HUB_OFFLINE=1."""
    path = os.path.expanduser(value)
    if is_local_path(value):
        if not os.path.isdir(path):
            kind = "is a file" if os.path.isfile(path) else "does not exist"
            return f"{kind}; expected a directory saved with save_pretrained (config.json + weights)"
        return None
    if not HUB_NAME.match(value):
        return "is neither an existing local directory nor a hub name like 'Qwen/Qwen2.5-0.5B-Instruct'"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "is not a local directory, and HF_HUB_OFFLINE=1 forbids downloading it from the hub"
    return None


def _check_model_paths(p: list[str], cfg: DictConfig, missing: list[str]) -> None:
    name = _get(cfg, "model.name_or_path")
    if (
        _get(cfg, "model.kind") == "hf"
        and "model.name_or_path" not in missing
        and isinstance(name, str)
        and name
    ):
        problem = model_location_problem(name)
        if problem:
            p.append(
                f"model.name_or_path: {name!r} {problem}. "
                "Fix: pass model.name_or_path=/path/to/a/saved/model (or use model=tiny)."
            )
    gguf_file = _get(cfg, "model.gguf_file")
    if _get(cfg, "model.kind") == "hf" and gguf_file:
        folder = os.path.expanduser(str(name or ""))
        path = gguf_file if os.path.isabs(str(gguf_file)) else os.path.join(folder, str(gguf_file))
        if not os.path.isfile(path):
            p.append(
                f"model.gguf_file: {path!r} is not a file. Fix: pass model.name_or_path=<folder holding the "
                "file> and model.gguf_file=<its file name>, or an absolute path to the .gguf file."
            )
    adapter = _get(cfg, "model.adapter_path")
    if adapter is not None:
        directory = os.path.expanduser(str(adapter))
        if not os.path.isfile(os.path.join(directory, "adapter_config.json")):
            p.append(
                f"model.adapter_path: {adapter!r} is not a LoRA adapter directory (no adapter_config.json). "
                "Fix: point it at a directory saved by peft's save_pretrained, or set model.adapter_path=null."
            )
    ckpt = _get(cfg, "ckpt_path")
    if ckpt is not None and not (isinstance(ckpt, str) and os.path.isfile(os.path.expanduser(ckpt))):
        p.append(
            f"ckpt_path: {ckpt!r} is not an existing local checkpoint file. "
            "Fix: point it at <run_dir>/checkpoints/last.ckpt, or set ckpt_path=null."
        )


def _check_more_ranges(p: list[str], cfg: DictConfig) -> None:
    """Ranges of the keys not covered above (each would otherwise fail deep inside a library)."""
    require(p, cfg, "seed", is_int, "an integer")
