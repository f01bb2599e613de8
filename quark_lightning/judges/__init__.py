"""LLM judges: one client for every LLM-judged dimension (see judges/settings.py for the settings).

build_judge(cfg)  the judge of a `judge` config group, shared by every scorer in the process that
                  passes the same settings (one local model loaded once, one set of counters)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quark_lightning.judges.client import Judge, JudgeReply, Messages
from quark_lightning.judges.settings import JudgeConfig

__all__ = ["Judge", "JudgeConfig", "JudgeReply", "Messages", "build_judge", "judge_config"]

_BUILT: dict[JudgeConfig, Judge] = {}


def judge_config(cfg: Mapping[str, Any] | JudgeConfig | None) -> JudgeConfig:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return JudgeConfig.from_mapping(cfg)


def build_judge(cfg: Mapping[str, Any] | JudgeConfig | None) -> Judge:
    """The judge for these settings, built once per process (raises ConfigError for bad settings)."""
    config = judge_config(cfg)
    if config not in _BUILT:
        if config.kind == "openai":
            from quark_lightning.judges.openai_compatible import OpenAICompatibleJudge

            _BUILT[config] = OpenAICompatibleJudge(config)
        else:
            from quark_lightning.judges.local import LocalJudge

            _BUILT[config] = LocalJudge(config)
    return _BUILT[config]
