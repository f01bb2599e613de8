"""The pipeline's stage kinds. Each is `fn(ctx, spec, stage_dir) -> outputs` (a JSON-able dict).

    sft              supervised fine-tuning (foundational capability, expert behaviour cloning)
                     -> policy/ (HF dir); with LoRA also adapter/ and base (what the adapter sits on)
    reward_model     trains a reward model experiment (rm_orm, rm_online) -> reward_model/, dimension
    rfn_calibration  Reference-Frozen Normalization statistics from the cloned policy's own answers
    grpo             RL against the full matrix, the cloned policy as start and frozen reference
    export           the final policy as an HF directory with a model card (stages/export.py)

Outputs feed later stages: the policy of the most recent SFT stage starts RL (and is its reference),
each reward model replaces the `train_experiment` of the matrix dimension it names, and the calibrated
statistics are loaded by RL instead of recalibrating.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from quark_lightning.cli.run import (
    build_datamodule,
    build_shaping,
    grpo_config,
    load_model,
    run_grpo,
    trainer_kwargs,
)
from quark_lightning.config.lora_settings import LoraSettings
from quark_lightning.config.validate import validate_config
from quark_lightning.data.sft_sources import load_sft_examples
from quark_lightning.grpo.grpo_module import GRPOModule
from quark_lightning.infra.checkpointing import AtomicCheckpointIO, check_checkpoint
from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.loggers import build_loggers, close_loggers
from quark_lightning.infra.rng_state import RNGStateCallback
from quark_lightning.matrix.build import build_matrix
from quark_lightning.models.loading import LoadedModel, apply_lora, load_causal_lm, merge_sft_adapter
from quark_lightning.reward_model.rm_settings import compose_experiment
from quark_lightning.reward_model.training import run_reward_model
from quark_lightning.shaping.calibration import calibrate, format_report
from quark_lightning.shaping.rfn import save_statistics
from quark_lightning.stages.context import PipelineContext, StageSpec
from quark_lightning.stages.export import export_policy
from quark_lightning.stages.sft import LengthBucketBatchSampler, SFTDataset, SFTModule, padding_fraction
from quark_lightning.stages.stage_files import StageFileError, read_json
from quark_lightning.stages.stage_settings import SFTStage

StageFn = Callable[[PipelineContext, StageSpec, str], dict[str, Any]]


# ---------------------------------------------------------------------------------------- shared
def stage_config(ctx: PipelineContext, stage_dir: str) -> DictConfig:
    """A copy of the root config whose run_dir is the stage directory (so ${run_dir} paths move too)."""
    cfg = copy.deepcopy(ctx.cfg)
    with open_dict(cfg):
        cfg.run_dir = stage_dir
        cfg.ckpt_path = None
    return cfg


def policy_source(ctx: PipelineContext) -> dict[str, str] | None:
    """{"base": dir, "adapter": dir | absent, "policy": merged dir} of the latest stage with a policy."""
    rec = ctx.latest("policy", kinds=("sft", "grpo"))
    return rec.outputs if rec else None


def load_start_policy(ctx: PipelineContext, cfg: DictConfig, records: list[dict[str, Any]]) -> LoadedModel:
    """The latest stage's policy (an SFT adapter is merged into its base), or the configured model."""
    source = policy_source(ctx)
    if source is None:
        return load_model(cfg.model, records)
    if source.get("adapter"):
        loaded = load_causal_lm(source["base"], dtype=cfg.model.dtype)
        loaded.model = merge_sft_adapter(loaded.model, source["adapter"])
        return loaded
    return load_causal_lm(source["policy"], dtype=cfg.model.dtype)


def point_model_at_policy(ctx: PipelineContext, cfg: DictConfig) -> None:
    """Make cfg.model load the latest stage's policy (`adapter_path` when it is an SFT adapter)."""
    source = policy_source(ctx)
    if source is None:
        return
    with open_dict(cfg):
        cfg.model.kind = "hf"
        cfg.model.name_or_path = source["base"] if source.get("adapter") else source["policy"]
        cfg.model.adapter_path = source.get("adapter")
        cfg.warmstart.enabled = False


def point_matrix_at_reward_models(ctx: PipelineContext, cfg: DictConfig) -> None:
    """Each reward-model stage replaces the scorer of the matrix dimension it names."""
    for rec in ctx.of_kind("reward_model"):
        dim = rec.outputs["dimension"]
        scorer = OmegaConf.select(cfg, f"matrix.dimensions.{dim}.scorer")
        if scorer is None:
            continue  # the dimension is not in this matrix: the stage's model is simply unused
        with open_dict(cfg):
            scorer.path = rec.outputs["reward_model"]
            scorer.train_experiment = None


def checkpoint_callback(stage_dir: str, every: int) -> L.Callback:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(
        dirpath=os.path.join(stage_dir, "checkpoints"),
        save_last=True,
        save_top_k=0,
        every_n_train_steps=every,
    )


def last_checkpoint(stage_dir: str) -> str | None:
    path = os.path.join(stage_dir, "checkpoints", "last.ckpt")
    return path if os.path.exists(path) else None


# ---------------------------------------------------------------------------------------- sft
@torch.no_grad()
def mean_answer_nll(model: torch.nn.Module, dataset, batch_size: int = 16) -> float:
    """Token-weighted mean NLL of the answers (labels != -100) of an SFTDataset."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in dataset.loader(batch_size, shuffle=False):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total, tokens = total + float(nll), tokens + int((labels != -100).sum())
    model.train(was_training)
    return total / max(tokens, 1)


def _sft_examples(
    cfg: DictConfig, opts: SFTStage, stage: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list, dict[str, int]]:
    """The prompt records, the held-out ones, and the stage's SFT examples with their count per source."""
    dm = build_datamodule(cfg)
    records = dm.load()
    train_records, held_out = dm.calibration_records(), dm.val_records()
    examples, counts = load_sft_examples(dict(opts.sources), train_records, held_out, f"pipeline.stages.{stage}")
    print(f"  SFT examples: {len(examples)} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return records, held_out, examples, counts


def _sft_datasets(tok, examples: list, held_out: list[dict[str, Any]], max_length: int):
    """The training set, and the held-out expert references to measure answer NLL on (None if none)."""
    train_set = SFTDataset(tok, examples, max_length=max_length)
    held = [r for r in held_out if r.get("reference")]
    eval_set = SFTDataset(tok, held, max_length=max_length) if held else None
    return train_set, eval_set


def _with_sft_lora(policy: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    """The policy with a fresh LoRA adapter when `lora.enabled`, else as is."""
    if lora.enabled:
        target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
        policy = apply_lora(policy, lora.r, lora.alpha, lora.dropout, target)
    return policy


def _fit_sft(cfg: DictConfig, spec: StageSpec, stage_dir: str, policy: torch.nn.Module, train_set) -> float:
    """Train the policy on length-bucketed batches (resuming from the stage's last checkpoint);
    return the padding fraction of the first epoch."""
    opts = spec.settings
    batches = LengthBucketBatchSampler(
        train_set.lengths(), opts.batch_size, cfg.seed, bucketing=opts.bucketing
    )
    loader = train_set.sampled_loader(batches)
    pad = padding_fraction(train_set.lengths(), batches.batches(0))  # of the first epoch, as trained
    module = SFTModule(policy, lr=opts.lr, weight_decay=opts.weight_decay, warmup_steps=opts.warmup_steps)
    kwargs = trainer_kwargs(cfg)
    kwargs.update(max_steps=opts.steps, max_epochs=-1, log_every_n_steps=10)

    loggers = build_loggers(cfg, spec.name)
    ckpt = last_checkpoint(stage_dir)
    check_checkpoint(ckpt, setting=None)  # damaged: exit 2 naming it, not a traceback inside Lightning
    if ckpt:
        print(f"  resuming from {ckpt}")
    callbacks = [checkpoint_callback(stage_dir, opts.checkpoint_every), RNGStateCallback()]
    trainer = L.Trainer(
        **kwargs, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt)
    close_loggers(loggers)
    return pad


def _save_sft_policy(
    policy: torch.nn.Module, tok, lora_enabled: bool, stage_dir: str, base_dir: str
) -> dict[str, str]:
    """Save the policy to policy/ (with LoRA: the adapter to adapter/ first, then the merged policy);
    return the paths ({"policy", "adapter", "base"})."""
    paths = {"policy": os.path.join(stage_dir, "policy")}
    if lora_enabled:
        paths["adapter"] = os.path.join(stage_dir, "adapter")
        paths["base"] = base_dir
        policy.save_pretrained(paths["adapter"])
        tok.save_pretrained(paths["adapter"])
        policy = policy.merge_and_unload()  # the merged SFT policy, for loading anywhere
    policy.save_pretrained(paths["policy"])
    tok.save_pretrained(paths["policy"])
    return paths


def run_sft_stage(ctx: PipelineContext, spec: StageSpec, stage_dir: str) -> dict[str, Any]:
    """Examples -> start policy (+ LoRA) -> held-out NLL -> fit -> held-out NLL -> save."""
    cfg = stage_config(ctx, stage_dir)
    opts = spec.settings
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    records, held_out, examples, counts = _sft_examples(cfg, opts, spec.name)

    loaded = load_start_policy(ctx, cfg, records)
    base_dir = loaded.model.config._name_or_path
    tok = loaded.tokenizer
    train_set, eval_set = _sft_datasets(tok, examples, held_out, opts.max_length)
    policy = _with_sft_lora(loaded.model, opts.lora)
    nll_before = mean_answer_nll(policy, eval_set) if eval_set else None

    pad = _fit_sft(cfg, spec, stage_dir, policy, train_set)
    policy.eval()
    nll_after = mean_answer_nll(policy, eval_set) if eval_set else None
    if nll_before is not None:
        print(
            f"  held-out answer NLL ({len(eval_set)} expert references): {nll_before:.3f} -> {nll_after:.3f}"
        )

    return {
        "examples": counts,
        "padding_fraction": round(pad, 4),
        "held_out_nll_before": nll_before,
        "held_out_nll_after": nll_after,
        **_save_sft_policy(policy, tok, opts.lora.enabled, stage_dir, base_dir),
    }


# ---------------------------------------------------------------------------------------- reward models
def run_reward_model_stage(ctx: PipelineContext, spec: StageSpec, stage_dir: str) -> dict[str, Any]:
    rm_cfg = compose_experiment(spec.settings.experiment, list(spec.settings.overrides))
    with open_dict(rm_cfg):
        rm_cfg.run_dir = stage_dir
        rm_cfg.seed = ctx.cfg.seed
        rm_cfg.model.cache_dir = ctx.cfg.model.cache_dir
    result = run_reward_model(rm_cfg)
    return {
        "reward_model": result["reward_model_dir"],
        "dimension": spec.settings.dimension,
        "held_out_before": result["before"],
        "held_out_after": result["after"],
    }


# ---------------------------------------------------------------------------------------- calibration
def run_calibration_stage(ctx: PipelineContext, spec: StageSpec, stage_dir: str) -> dict[str, Any]:
    cfg = stage_config(ctx, stage_dir)
    point_model_at_policy(ctx, cfg)
    point_matrix_at_reward_models(ctx, cfg)
    validate_config(cfg)
    norm_cfg = cfg.optimization.get("normalization")
    if norm_cfg is None:
        raise ConfigError(
            f"pipeline.stages.{spec.name}: optimization={cfg.optimization.aggregator} has no normalization to "
            "calibrate. Fix: use optimization=rfn_tadw (or rfn), or drop the stage (its value: null)"
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    records = dm.load()
    matrix = build_matrix(cfg.matrix)
    loaded = load_start_policy(ctx, cfg, records)
    config = dataclasses.replace(grpo_config(cfg), beta=0.0)  # the policy *is* the reference here
    module = GRPOModule(loaded.model, loaded.tokenizer, matrix, config, instantiate(cfg.rollout),
                        shaping=build_shaping(cfg, matrix))  # fmt: skip
    G = norm_cfg.num_generations or cfg.algorithm.num_generations
    n = calibrate(module, dm.calibration_records(), norm_cfg.calibration_prompts, G)
    save_statistics(module.shaping.normalizer, matrix.names, stage_dir)
    print(
        f"  calibrated on {n} answers of the cloned reference policy:\n{format_report(matrix.names, module.shaping.normalizer)}"
    )
    return {
        "rfn_statistics": stage_dir,
        "samples": n,
        "status": dict(zip(matrix.names, module.shaping.normalizer.status)),
    }


# ---------------------------------------------------------------------------------------- rl
def run_grpo_stage(ctx: PipelineContext, spec: StageSpec, stage_dir: str) -> dict[str, Any]:
    cfg = stage_config(ctx, stage_dir)
    point_model_at_policy(ctx, cfg)
    point_matrix_at_reward_models(ctx, cfg)
    calibrated = ctx.latest("rfn_statistics")
    with open_dict(cfg):
        if calibrated and cfg.optimization.get("normalization") is not None:
            cfg.optimization.normalization.statistics_path = calibrated.outputs["rfn_statistics"]
        for key, value in spec.settings.overrides.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        cfg.ckpt_path = last_checkpoint(stage_dir)
    result = run_grpo(cfg)
    source = policy_source(ctx) or {}
    policy_dir = result.get("policy_dir") or os.path.join(stage_dir, "policy")
    is_adapter = os.path.exists(os.path.join(policy_dir, "adapter_config.json"))
    reward = None
    summary_path = os.path.join(stage_dir, "summary.json")
    if os.path.exists(summary_path):
        fix = f"delete the directory {stage_dir} (or pass pipeline.rerun_from={spec.name}) to run the stage again"
        metrics = read_json(summary_path, fix, keys=("metrics",))["metrics"]
        if not isinstance(metrics, dict):
            raise StageFileError(f"{summary_path} is damaged: its metrics are not an object. Fix: {fix}")
        reward = metrics.get("reward")
    return {
        "reward": reward,
        "policy": policy_dir,
        "adapter": policy_dir if is_adapter else None,
        # an RL adapter sits on the policy RL started from (the merged cloned policy)
        "base": source.get("policy") or str(cfg.model.get("name_or_path") or ""),
        "checkpoint": result.get("checkpoint"),
        "eval_dir": os.path.join(stage_dir, "eval"),
        "summary": summary_path,
    }


def run_export_stage(ctx: PipelineContext, spec: StageSpec, stage_dir: str) -> dict[str, Any]:
    rl = ctx.latest("policy", kinds=("grpo",)) or ctx.latest("policy")
    if rl is None:
        raise ConfigError(
            f"pipeline.stages.{spec.name}: nothing to export: no earlier stage produced a policy"
        )
    return export_policy(ctx, rl, stage_dir, merge=bool(spec.settings.merge))


STAGE_KINDS: dict[str, StageFn] = {
    "sft": run_sft_stage,
    "reward_model": run_reward_model_stage,
    "rfn_calibration": run_calibration_stage,
    "grpo": run_grpo_stage,
    "export": run_export_stage,
}
