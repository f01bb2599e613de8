"""Validation of `pipeline.stages.*` before any stage runs: each problem names the key and the fix."""

from __future__ import annotations

from omegaconf import DictConfig

from quark_lightning.config.typed import is_int, is_num, require
from quark_lightning.infra.errors import ConfigError


def _sft(p: list[str], cfg: DictConfig, at: str) -> None:
    require(p, cfg, f"{at}.sources", lambda v: isinstance(v, DictConfig) and len(v) > 0,
             "a mapping of SFT sources, e.g. {expert_references: {}}")  # fmt: skip
    require(p, cfg, f"{at}.steps", lambda v: is_int(v) and v >= 1, "an integer >= 1 (optimizer steps)")
    require(p, cfg, f"{at}.batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    require(p, cfg, f"{at}.lr", lambda v: is_num(v) and v > 0, "a learning rate > 0")
    require(p, cfg, f"{at}.weight_decay", lambda v: is_num(v) and v >= 0, "a number >= 0")
    require(p, cfg, f"{at}.warmup_steps", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    require(p, cfg, f"{at}.max_length", lambda v: is_int(v) and v >= 16, "an integer >= 16 (tokens)")
    require(p, cfg, f"{at}.bucketing", lambda v: isinstance(v, bool), "true or false")
    require(p, cfg, f"{at}.checkpoint_every", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    require(p, cfg, f"{at}.lora.enabled", lambda v: isinstance(v, bool), "true or false")
    require(p, cfg, f"{at}.lora.r", lambda v: is_int(v) and v > 0, "a positive integer (LoRA rank)")


def _reward_model(p: list[str], cfg: DictConfig, at: str) -> None:
    require(
        p, cfg, f"{at}.experiment", lambda v: isinstance(v, str) and v, "an experiment name such as rm_orm"
    )
    require(p, cfg, f"{at}.dimension", lambda v: isinstance(v, str) and v, "the matrix dimension it scores")


def _export(p: list[str], cfg: DictConfig, at: str) -> None:
    require(p, cfg, f"{at}.merge", lambda v: v is None or isinstance(v, bool), "true or false")


CHECKS = {"sft": _sft, "reward_model": _reward_model, "export": _export}


def validate_stages(cfg: DictConfig, specs) -> None:
    """Raise ConfigError listing every wrong option of every configured stage."""
    p: list[str] = []
    for spec in specs:
        check = CHECKS.get(spec.kind)
        if check:
            check(p, cfg, f"pipeline.stages.{spec.name}")
    if p:
        raise ConfigError("invalid pipeline configuration:\n  - " + "\n  - ".join(p))
