"""The reward model's backbone, as the config chooses it, and building the model on it.

Which backbone (`reward_model.backbone`):
    policy   the run's `model` group: model=tiny (the default), model=smollm2, model=hf model.name_or_path=...
    tiny     the tiny model built in code, whatever `model` is (model.tiny when model=tiny, else the
             sizes of conf/model/tiny.yaml)
and how it trains (`reward_model.train_backbone`):
    full     every backbone weight and the head
    lora     a LoRA adapter (reward_model.lora) and the head; merged into the backbone on save
    frozen   the head alone, on the backbone's pooled hidden state of each distinct text, computed once
             (no backbone gradient): a 135M backbone trains in seconds after one forward per text
    auto     full for the tiny model, frozen for a pretrained one (lora when reward_model.lora.enabled)
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.tree import conf_dir
from quark_lightning.models.weight_sources import model_kind, resolve_model_path
from quark_lightning.reward_model.rm_settings import RewardModelSettings
from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

TINY_MODEL_CONFIG = str(conf_dir() / "model" / "tiny.yaml")


def backbone_model_config(cfg: DictConfig) -> DictConfig:
    """The model config the reward model is built on: the run's `model` (backbone=policy, or when it is
    the tiny model), else the tiny model of conf/model/tiny.yaml in the run's model.cache_dir."""
    if cfg.reward_model.backbone == "policy" or model_kind(cfg.model) == "tiny":
        return cfg.model
    tiny = OmegaConf.load(TINY_MODEL_CONFIG)
    tiny.cache_dir = cfg.model.cache_dir
    return tiny


def train_backbone_mode(rm: RewardModelSettings, model_cfg: DictConfig) -> str:
    """full | lora | frozen: `reward_model.train_backbone`, with auto resolved (see the module docstring);
    `model_cfg` is the backbone's model config (`backbone_model_config`)."""
    if rm.train_backbone != "auto":
        return rm.train_backbone
    if rm.lora.enabled:
        return "lora"
    return "full" if model_kind(model_cfg) == "tiny" else "frozen"


def backbone_name(model_cfg: DictConfig) -> str:
    """tiny, smollm2, or the hub name / directory of model=hf."""
    kind = model_kind(model_cfg)
    return str(model_cfg.get("name_or_path")) if kind == "hf" else str(kind)


def describe_backbone(rm: RewardModelSettings, model_cfg: DictConfig) -> str:
    """E.g. 'smollm2 (reward_model.backbone=policy, train_backbone=frozen, pooling=last)', for the log."""
    return (
        f"{backbone_name(model_cfg)} (reward_model.backbone={rm.backbone}, "
        f"train_backbone={train_backbone_mode(rm, model_cfg)}, pooling={rm.pooling})"
    )


def build_reward_model(rm: RewardModelSettings, model_cfg: DictConfig, corpus: list[str]):
    """The scalar reward model on the backbone `model_cfg` (`backbone_model_config`), trained as `rm` says."""
    path = resolve_model_path(model_cfg, corpus)  # the source model._target_ names (models/weight_sources.py)
    mode = train_backbone_mode(rm, model_cfg)
    lora = {**dataclasses.asdict(rm.lora), "enabled": mode == "lora"}
    model = ScalarRewardModel.from_backbone(
        path,
        dtype=model_cfg.dtype,
        trust_remote_code=bool(model_cfg.get("trust_remote_code")),
        revision=model_cfg.get("revision"),
        head_hidden_size=rm.head_hidden_size,
        lora=lora,
        pooling=rm.pooling,
    )
    if mode == "frozen":
        model.freeze_backbone()
    return model
