"""Reward models trained on demand, once: `ensure_reward_model` and the cache key of its run directory.

`ORMScorer(train_experiment=..., backbone=..., policy_model=...)` names a reward model that may not exist
yet; `ensure_reward_model` trains it (the `reward_model` stage, `training.run_reward_model`) into
`<cache_dir>/reward_models/<experiment>-<backbone>-<key>` the first time and returns the saved directory
ever after. The key hashes the composed `reward_model` node (`cache_key_yaml`), the backbone's identity
(`backbone_fingerprint`) and the training data.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.tree import conf_dir
from quark_lightning.data.preferences import BUNDLED_FEEDBACK, BUNDLED_PAIRS, resolve
from quark_lightning.infra.checkpointing import capture_rng_state, restore_rng_state
from quark_lightning.models.tiny import default_cache_dir
from quark_lightning.models.weight_sources import model_config, model_kind
from quark_lightning.reward_model.rm_backbone import backbone_model_config, backbone_name
from quark_lightning.reward_model.rm_settings import compose_experiment, validate_reward_model_config
from quark_lightning.reward_model.training import run_reward_model
from quark_lightning.scorers.orm import ORMScorer

RM_CONFIG = str(conf_dir() / "reward_model" / "orm.yaml")
SHIPPED_TRAINING_NODES = ("optimizer", "lr_scheduler")  # in RM_CONFIG; see cache_key_yaml


def backbone_fingerprint(model_cfg: DictConfig) -> str:
    """What identifies a backbone in the reward-model cache key, without loading or converting it: the
    source fields (the tiny sizes for model=tiny; smollm2 is pinned by its checksum) and, for a local
    directory, the names, sizes and mtimes of its config and weight files (a policy re-trained in place)."""
    import json

    fields = ("kind", "name_or_path", "gguf_file", "revision", "dtype", "trust_remote_code")
    kind = model_kind(model_cfg)  # model.kind; for a config with only `_target_`, its source's kind
    ident: dict[str, Any] = {**{k: model_cfg.get(k) for k in fields}, "kind": kind}
    if kind == "tiny":
        ident["tiny"] = OmegaConf.to_container(model_cfg.tiny, resolve=True)
    text = json.dumps(ident, sort_keys=True, default=str)
    folder = os.path.expanduser(str(model_cfg.get("name_or_path") or ""))
    if kind == "hf" and folder and os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name == "config.json" or name.endswith((".safetensors", ".bin", ".gguf")):
                st = os.stat(os.path.join(folder, name))
                text += f"\n{name} {st.st_size} {st.st_mtime_ns}"
    return text


def cache_key_yaml(rm: DictConfig) -> str:
    """`reward_model` as the cache key reads it: its YAML without the `optimizer` / `lr_scheduler` nodes
    when they are the shipped ones (conf/reward_model/orm.yaml), which only point at lr, weight_decay and
    warmup_steps (in the key already), so reward models cached before those nodes existed are found again.
    A changed node is part of the key."""
    shipped = OmegaConf.load(RM_CONFIG)
    plain = OmegaConf.to_container(rm, resolve=False)
    for key in SHIPPED_TRAINING_NODES:
        if key in plain and plain[key] == OmegaConf.to_container(shipped[key], resolve=False):
            del plain[key]
    return OmegaConf.to_yaml(OmegaConf.create(plain))


def reward_model_run_dir(
    experiment: str,
    cache_dir: str | None = None,
    overrides: list[str] | None = None,
    backbone: str | None = None,
    model: Any = None,
):
    """(validated config, cache run dir) of the reward model `ensure_reward_model` trains; nothing is built.

    backbone: sets reward_model.backbone (tiny | policy); model: the config the policy backbone is (the
    run's `model`; without it, the experiment's own `model` group)."""
    import hashlib
    from pathlib import Path

    from omegaconf import open_dict

    cfg = compose_experiment(experiment, overrides)
    with open_dict(cfg):
        if backbone is not None:
            cfg.reward_model.backbone = backbone
        if model is not None and cfg.reward_model.backbone == "policy":
            model = model_config(model)  # a matrix's `${model}` arrives built: a ModelSource
            plain = OmegaConf.to_container(model, resolve=True) if OmegaConf.is_config(model) else dict(model)
            cfg.model = OmegaConf.create(plain)
        if cfg.reward_model.backbone != "policy" or model_kind(cfg.model) == "tiny":
            cfg.model.cache_dir = cache_dir or cfg.model.cache_dir  # the tiny model: built in this cache
    validate_reward_model_config(cfg)  # a wrong value stops here, before any hashing or training
    model_cfg = backbone_model_config(cfg)
    key_src = cache_key_yaml(cfg.reward_model) + backbone_fingerprint(model_cfg)
    bundled = BUNDLED_PAIRS if cfg.reward_model.source == "pairs" else BUNDLED_FEEDBACK
    data_file = resolve(cfg.reward_model.data_path, bundled)
    digest = hashlib.sha256(key_src.encode() + Path(data_file).read_bytes()).hexdigest()[:12]
    name = os.path.basename(backbone_name(model_cfg).rstrip("/"))
    tag = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:40] or "model"
    run_dir = Path(cache_dir or default_cache_dir()) / "reward_models" / f"{experiment}-{tag}-{digest}"
    return cfg, run_dir


def ensure_reward_model(
    experiment: str,
    cache_dir: str | None = None,
    overrides: list[str] | None = None,
    backbone: str | None = None,
    model: Any = None,
) -> str:
    """Train (once) the reward model of `+experiment=NAME` and return its saved directory.

    The run directory is `cache_dir/reward_models/<experiment>-<backbone>-<key>`, where the key hashes the
    composed reward-model config (backbone, train_backbone, pooling included), the backbone's identity
    (`backbone_fingerprint`) and the training data, so a changed config, backbone or data file trains anew
    and an unchanged one is reused. Used when a matrix is built (`resolved_scorer_config`), so a matrix can
    name a reward model that does not exist yet (the embedded demo does this).
    """
    from omegaconf import open_dict

    cfg, run_dir = reward_model_run_dir(experiment, cache_dir, overrides, backbone, model)
    saved = run_dir / "reward_model"
    if (saved / "reward_model.json").exists():
        return str(saved)
    print(f"Training the reward model of +experiment={experiment} once (cached in {run_dir})")
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)

    streams = capture_rng_state()  # training it must not change the calling run's random streams:
    try:  # a first run (trains the RM) and a rerun (finds it cached) then sample the same answers
        return run_reward_model(cfg)["reward_model_dir"]
    finally:
        restore_rng_state(streams)


def resolved_scorer_config(scorer: dict[str, Any]) -> dict[str, Any]:
    """A reward-model scorer config with `path` set: a saved directory as given, else the reward model of
    `train_experiment`, trained once and cached (`ensure_reward_model`). The training keys
    (`ORMScorer.BUILD_KEYS`, conf/matrix/medical.yaml) are dropped."""
    scorer = dict(scorer)
    train = {key: scorer.pop(key, None) for key in ORMScorer.BUILD_KEYS}
    if scorer.get("path") is None:
        if not train["train_experiment"]:
            raise ValueError(
                "a reward-model scorer needs `path` (a directory saved by `python train.py +experiment=rm_orm`) "
                "or `train_experiment` (e.g. rm_orm) to train and cache one"
            )
        scorer["path"] = ensure_reward_model(
            train["train_experiment"],
            train["cache_dir"],
            [str(o) for o in train["train_overrides"] or []],
            backbone=train["backbone"],
            model=train["policy_model"],
        )
    return scorer
