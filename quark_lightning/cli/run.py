"""The one wiring function: read the config, build every object, run the stages.

    validate config -> load + validate data -> build matrix -> load (or build) the model
    -> optional supervised warm start -> optional LoRA -> GRPOModule -> Lightning fit -> save policy

Everything below this file receives objects, not config.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.groups import validate_groups
from quark_lightning.config.typed import typed
from quark_lightning.config.validate import validate_config
from quark_lightning.config.warmstart_settings import NODES as WARMSTART_NODES
from quark_lightning.config.warmstart_settings import WarmstartSettings
from quark_lightning.data.data_settings import data_settings
from quark_lightning.data.datamodule import PromptDataModule
from quark_lightning.data.references import validate_fact_references
from quark_lightning.grpo.grpo_config import ALGORITHM_NODES
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.infra.checkpointing import AtomicCheckpointIO, check_checkpoint, resolve_ckpt_path
from quark_lightning.infra.distributed import full_state_dict
from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.loggers import build_loggers, close_loggers, logger_locations
from quark_lightning.infra.optimizers import optimizer_factory, scheduler_factory
from quark_lightning.infra.precision import run_precision
from quark_lightning.infra.rng_state import RNGStateCallback
from quark_lightning.infra.schedules import validate_scheduler_factory
from quark_lightning.infra.strategies import build_strategy
from quark_lightning.loop.loop_state import write_reward_state
from quark_lightning.matrix.build import build_matrix
from quark_lightning.models.loading import LoadedModel, apply_lora, load_causal_lm, merge_sft_adapter
from quark_lightning.models.saving import save_policy
from quark_lightning.models.weight_sources import resolve_model_path
from quark_lightning.shaping.aggregation import aggregator_spec
from quark_lightning.shaping.reward_shaping import RewardShaping
from quark_lightning.stages.sft import SFTDataset, SFTModule

# Intentional, so not worth a warning: the frozen reference and reward models stay in eval mode, and the
# checkpoint of a manually optimized step holds the state after the step (what a resume needs).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def corpus_texts(records: list[dict[str, Any]]) -> list[str]:
    """Text the tiny tokenizer is trained on: every message and reference answer of the prompt data."""
    texts = []
    for r in records:
        texts += [m["content"] for m in r["messages"]]
        if r.get("reference"):
            texts.append(r["reference"])
    return texts


def load_model(model_cfg: DictConfig, records: list[dict[str, Any]]) -> LoadedModel:
    path = resolve_model_path(model_cfg, corpus_texts(records))  # builds model._target_ (models/weight_sources.py)
    return load_causal_lm(
        path,
        dtype=model_cfg.dtype,
        trust_remote_code=bool(model_cfg.trust_remote_code),
        revision=model_cfg.get("revision"),
        attn_implementation=model_cfg.get("attn_implementation"),
        chat_template=model_cfg.get("chat_template"),  # for a base model without one (load_tokenizer)
    )


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs["strategy"] = build_strategy(kwargs.get("strategy", "auto"))
    return kwargs


def run_warmstart(cfg: DictConfig, loaded: LoadedModel, records: list[dict[str, Any]]) -> None:
    """Supervised warm start on the reference answers (in place on loaded.model)."""
    node = cfg.warmstart
    ws = typed(WarmstartSettings, OmegaConf.to_container(node, resolve=True), "warmstart", allowed=WARMSTART_NODES)
    dataset = SFTDataset(loaded.tokenizer, records, max_length=ws.max_length)
    module = SFTModule(
        loaded.model,
        lr=ws.lr,
        weight_decay=ws.weight_decay,
        warmup_steps=ws.warmup_steps,
        optimizer=optimizer_factory(node.get("optimizer"), "warmstart.optimizer"),
        lr_scheduler=scheduler_factory(node.get("lr_scheduler"), "warmstart.lr_scheduler"),
    )  # a null node: AdamW / linear_warmup from the flat keys (infra/optimizers.py)
    kwargs = trainer_kwargs(cfg)
    kwargs.update(max_steps=ws.steps, enable_checkpointing=False, log_every_n_steps=10)
    loggers = build_loggers(cfg, "warmstart")
    trainer = L.Trainer(**kwargs, logger=loggers or False, callbacks=[])
    trainer.fit(module, train_dataloaders=dataset.loader(ws.batch_size))
    close_loggers(loggers)
    loaded.model.eval()


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The `callbacks` group plus the callbacks the aggregator needs (`optimization.callbacks`: reward
    rescaling, weighting), which drive the module's RewardShaping; and the random-stream callback."""
    configured = list((cfg.get("callbacks") or {}).values())
    configured += list((cfg.optimization.get("callbacks") or {}).values())
    return [instantiate(c) for c in configured if c is not None] + [RNGStateCallback()]


def build_shaping(cfg: DictConfig, matrix) -> RewardShaping:
    """The `optimization` group's RewardShaping: aggregator, normalizer and TADW settings, length control
    (shaping/reward_shaping.py)."""
    opt = cfg.optimization
    spec = aggregator_spec(opt.aggregator)

    def settings(key: str, used: bool):
        node = opt.get(key)
        if not used or node is None:
            return None
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    return RewardShaping.from_matrix(
        matrix,
        opt.aggregator,
        normalization=settings("normalization", spec.needs_normalizer),
        weighting=settings("weighting", spec.adaptive_weights),
        length_control=settings("length_control", True),
    )


def grpo_config(cfg: DictConfig) -> GRPOConfig:
    algo = OmegaConf.to_container(cfg.algorithm, resolve=True)
    return typed(GRPOConfig, algo, "algorithm", allowed=ALGORITHM_NODES)


def lr_scheduler_factory(cfg: DictConfig):
    """`algorithm.lr_scheduler` as optimizer -> scheduler (checked on a throwaway optimizer); None if unset."""
    node = cfg.algorithm.get("lr_scheduler")
    if node is None:
        return None

    try:
        factory = instantiate(node)
    except Exception as err:  # noqa: BLE001 - a wrong _target_ or argument is a config problem
        raise ConfigError(f"algorithm.lr_scheduler: could not be built: {err}") from err
    validate_scheduler_factory(factory)
    return factory


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the stage the config names (`stage`, default `grpo`)."""
    stage = cfg.get("stage", "grpo")
    if stage not in STAGES:
        raise ConfigError(f"stage: got {stage!r}, expected one of {sorted(STAGES)}. Fix: pass stage=grpo")
    module_name, function = STAGES[stage]
    with run_precision(cfg.get("trainer", {}).get("precision")):  # 64-true: float64 numerics throughout
        return getattr(importlib.import_module(module_name), function)(cfg)


# stage name -> (module, function); each function receives the whole config
STAGES: dict[str, tuple[str, str]] = {
    "grpo": ("quark_lightning.cli.run", "run_grpo"),
    "reward_model": ("quark_lightning.reward_model.training", "run_reward_model"),
    "pipeline": ("quark_lightning.stages.runner", "run_pipeline"),
}


def build_datamodule(cfg: DictConfig) -> PromptDataModule:
    """The prompts of the `data` group (typed: data/data_settings.py); a warm start needs reference answers."""
    return PromptDataModule(**data_settings(cfg.data).module_kwargs(), require_reference=bool(cfg.warmstart.enabled))


def starts_from_sft(cfg: DictConfig) -> bool:
    """True when RL starts from weights that are not the loaded model's: a warm start or a merged adapter.

    A resumed run counts too: its checkpoint holds the warm-started weights.
    """
    return bool(cfg.warmstart.enabled or cfg.model.get("adapter_path"))


def save_outputs(
    cfg: DictConfig, trainer: L.Trainer, module: GRPOModule, tokenizer, logger
) -> dict[str, Any]:
    """Final checkpoint (every rank enters), the policy as an HF directory, its reward state, and where
    everything is."""
    result: dict[str, Any] = {"run_dir": cfg.run_dir}
    # ModelCheckpoint only saves every N steps; the final state always goes to checkpoints/last.ckpt.
    final_ckpt = os.path.join(cfg.run_dir, "checkpoints", "last.ckpt")
    trainer.save_checkpoint(final_ckpt)  # collective call: every rank enters, rank 0 writes
    result["checkpoint"] = final_ckpt

    full_policy = full_state_dict(module.policy) if cfg.save_policy else None  # FSDP2: every rank gathers
    if not trainer.is_global_zero:
        return result
    if cfg.save_policy:
        policy_dir = os.path.join(cfg.run_dir, "policy")  # LoRA after an SFT start: + policy/base/
        save_policy(module.policy, tokenizer, policy_dir, full_policy, save_base=starts_from_sft(cfg))
        result["policy_dir"] = policy_dir
    # the reward the policy was trained against (evaluate.py reward_state=..., score.py --reward-state ...)
    reward_state = os.path.join(cfg.run_dir, "reward_state.json")
    result["reward_state"] = write_reward_state(reward_state, module.shaping, trainer.global_step)
    result.update(logger_locations(logger or []))  # `logger`: the list of build_loggers
    print("\nDone.")
    for key, value in result.items():
        print(f"  {key:<16} {value}")
    if "tensorboard_dir" in result:
        print(f"  inspect with:    tensorboard --logdir {os.path.dirname(result['tensorboard_dir'])}")
    return result


def run_grpo(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("ckpt_path") is not None:  # `last` or a run dir -> <run_dir>/checkpoints/last.ckpt
        cfg.ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.run_dir)
    validate_config(cfg)
    validate_groups(cfg)  # unknown keys and values of every group, before anything heavy
    algorithm = grpo_config(cfg)  # checks its own values
    scheduler = lr_scheduler_factory(cfg)
    optimizer = optimizer_factory(cfg.algorithm.get("optimizer"), "algorithm.optimizer")  # null: AdamW
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    os.makedirs(cfg.run_dir, exist_ok=True)
    datamodule = build_datamodule(cfg)
    records = datamodule.load()  # validates every row; a bad row stops here
    matrix = build_matrix(cfg.matrix)
    validate_fact_references(records, matrix)  # a prompt's `facts` must name knowledge-base ids
    loaded = load_model(cfg.model, records)

    resuming = cfg.ckpt_path is not None
    if resuming and not os.path.exists(cfg.ckpt_path):
        raise ConfigError(
            f"ckpt_path: {cfg.ckpt_path!r} does not exist. Fix: point it at <run_dir>/checkpoints/last.ckpt"
        )
    check_checkpoint(cfg.ckpt_path)  # damaged, or not a Lightning checkpoint: exit 2 naming it
    if resuming:
        print(f"Resuming from {cfg.ckpt_path} (policy, reference, optimizer, step and callback state)")
    if cfg.warmstart.enabled and not resuming:  # a checkpoint already holds the warm-started weights
        run_warmstart(cfg, loaded, records)
    if cfg.model.get("adapter_path"):  # start RL from an SFT adapter: its policy is the reference
        loaded.model = merge_sft_adapter(loaded.model, cfg.model.adapter_path)
    policy = loaded.model
    if cfg.model.lora.enabled:
        lora = cfg.model.lora
        target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
        policy = apply_lora(policy, lora.r, lora.alpha, lora.dropout, target)

    module = GRPOModule(
        policy=policy,
        tokenizer=loaded.tokenizer,
        matrix=matrix,
        config=algorithm,
        rollout_engine=instantiate(cfg.rollout),
        lr_scheduler=scheduler,
        shaping=build_shaping(cfg, matrix),
    )
    module.optimizer_factory = optimizer  # read by GRPOModule.configure_optimizers
    loggers = build_loggers(cfg, "grpo")
    trainer = L.Trainer(
        **trainer_kwargs(cfg),
        logger=loggers or False,
        callbacks=build_callbacks(cfg),
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    result = save_outputs(cfg, trainer, module, loaded.tokenizer, loggers)
    close_loggers(loggers)
    return result
