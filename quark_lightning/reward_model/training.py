"""Stage `reward_model`: train the scalar ORM (or the online-feedback RM) and save it as an HF directory.

    validate config -> load + validate pairs (or feedback -> pairs) -> split by question (seeded)
    -> build the backbone (tiny model or the run's `model`) + 2-layer head -> evaluate held-out
    -> Lightning fit with the ties loss (atomic checkpoints every `checkpoint_every` steps in
    <run_dir>/checkpoints; the same command again resumes from last.ckpt) -> evaluate held-out
    -> save <run_dir>/reward_model

`python train.py +experiment=rm_orm` (preference pairs) or `+experiment=rm_online` (online feedback).
The saved directory is what `quark_lightning.scorers.orm.ORMScorer(path=...)` loads.

The config node is validated by `rm_settings`; the backbone (`reward_model.backbone`: tiny | policy) and
how it trains (`reward_model.train_backbone`: full | lora | frozen | auto) are chosen in `rm_backbone`;
the held-out metrics (pair and tie accuracy, length-controlled accuracy, ...) are in `heldout`; a reward
model trained once on demand and cached is `rm_cache.ensure_reward_model`.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from quark_lightning.data.length_control import length_control_pairs
from quark_lightning.data.preferences import (
    describe,
    feedback_to_pairs,
    load_online_feedback,
    load_preference_pairs,
    pair_texts,
    split_by_question,
)
from quark_lightning.data.schema import DataValidationError
from quark_lightning.infra.checkpointing import AtomicCheckpointIO, check_checkpoint
from quark_lightning.infra.loggers import build_loggers, close_loggers, logger_locations
from quark_lightning.infra.optimizers import optimizer_factory, scheduler_factory
from quark_lightning.infra.rng_state import RNGStateCallback
from quark_lightning.models.weight_sources import model_kind
from quark_lightning.reward_model.heldout import held_out_metrics, print_evaluation
from quark_lightning.reward_model.pair_datasets import FeaturePairDataset, PairDataset
from quark_lightning.reward_model.rm_backbone import (
    backbone_model_config,
    backbone_name,
    build_reward_model,
    describe_backbone,
    train_backbone_mode,
)
from quark_lightning.reward_model.rm_settings import RewardModelSettings, validate_reward_model_config
from quark_lightning.reward_model.rm_training_module import RewardModelModule

OBJECTIVE = "J = L_diff + lambda * L_same; L_diff = -log s(r_w - r_l); L_same = -log s(m - |r_1 - r_2|)"
OBJECTIVE_LITERAL = "J = L_diff + lambda * L_same; L_same = -log s(|r_1 - r_2|) (literal paper transcription)"


def load_pairs(rm: RewardModelSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(train pairs, held-out pairs, tokenizer corpus) for the configured source; validates every row."""
    if rm.source == "pairs":
        pairs = load_preference_pairs(rm.data_path)
        train, held_out = split_by_question(pairs, rm.val_fraction, rm.split_seed)
        return train, held_out, pair_texts(pairs)
    records = load_online_feedback(rm.data_path)
    train_fb, held_fb = split_by_question(records, rm.val_fraction, rm.split_seed)
    fb = rm.feedback
    train = feedback_to_pairs(train_fb, fb.ties, fb.max_pairs_per_question, seed=rm.split_seed)
    held_out = feedback_to_pairs(held_fb, fb.ties, fb.max_pairs_per_question, seed=rm.split_seed + 1)
    if not train:
        raise DataValidationError(
            [
                f"{rm.data_path}: no training pairs could be built from the feedback: a question needs a liked "
                "and a disliked response (or two with the same rating, with reward_model.feedback.ties=true)"
            ]
        )
    return train, held_out, pair_texts(records)


def training_factories(node: DictConfig):
    """(`reward_model.optimizer`, `reward_model.lr_scheduler`) of the config node built as `_partial_`
    factories; None where a node is null or absent (AdamW and linear_warmup from the flat keys,
    infra/optimizers.py)."""
    return (
        optimizer_factory(node.get("optimizer"), "reward_model.optimizer"),
        scheduler_factory(node.get("lr_scheduler"), "reward_model.lr_scheduler"),
    )


def checkpoint_callbacks(run_dir: str, every: int) -> list[L.Callback]:
    """`<run_dir>/checkpoints/last.ckpt` every `every` steps (written atomically by AtomicCheckpointIO),
    plus the random streams, so a killed reward-model run resumes exactly, as the SFT and RL stages do."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = ModelCheckpoint(
        dirpath=os.path.join(run_dir, "checkpoints"), save_last=True, save_top_k=0, every_n_train_steps=every
    )
    return [checkpoints, RNGStateCallback()]


def resume_checkpoint(run_dir: str) -> str | None:
    """The last checkpoint of an interrupted run in `run_dir`, to resume from (None: start afresh)."""
    path = os.path.join(run_dir, "checkpoints", "last.ckpt")
    if not os.path.exists(path):
        return None
    check_checkpoint(path, setting=None)  # damaged: exit 2 naming it, not a traceback inside Lightning
    print(f"Reward model: resuming from {path}")
    return path


def _print_data_and_backbone(
    rm: RewardModelSettings,
    run_model: DictConfig,
    model_cfg: DictConfig,
    train_pairs: list[dict[str, Any]],
    held_pairs: list[dict[str, Any]],
) -> None:
    """The pairs of each split, and which backbone (`model_cfg`) trains how, with what of the run's `model`
    (`run_model`) does not apply."""
    print(f"Reward model ({rm.source}): train {describe(train_pairs)}")
    print(f"Reward model ({rm.source}): held-out {describe(held_pairs)}")
    if rm.backbone == "tiny" and model_kind(run_model) != "tiny":
        print(
            f"Reward model backbone: the tiny model, not model={model_kind(run_model)} "
            "(pass reward_model.backbone=policy to train on the run's model)"
        )
    print(f"Reward model backbone: {describe_backbone(rm, model_cfg)}")
    if rm.backbone == "policy" and run_model.get("adapter_path"):
        print(
            f"  (model.adapter_path={run_model.adapter_path} is not applied: the backbone is the base model)"
        )


def _pair_datasets(model, rm: RewardModelSettings, mode: str, train_pairs: list, held_pairs: list):
    """(train set, held-out set, length-control set, feature seconds, feature texts). With a frozen
    backbone: the pooled features of each distinct text, one backbone forward each, for the head to train
    on; else tokenized pairs (feature seconds and texts are 0). The length-control set holds each held-out
    preferred pair as (preferred answer, rejected answer padded with filler to at least the preferred
    one's words + 50), see `length_control_pairs`; its features are not counted in the feature totals."""
    control_pairs = length_control_pairs(held_pairs)
    feature_seconds, feature_texts = 0.0, 0
    if mode == "frozen":  # one backbone forward per distinct text; the head trains on the cached features
        train_set = FeaturePairDataset(model, train_pairs, rm.max_length, rm.feature_batch_size)
        held_set = FeaturePairDataset(model, held_pairs, rm.max_length, rm.feature_batch_size)
        control_set = FeaturePairDataset(model, control_pairs, rm.max_length, rm.feature_batch_size)
        feature_seconds = train_set.seconds + held_set.seconds
        feature_texts = train_set.num_texts + held_set.num_texts
        print(
            f"Frozen backbone: features of {feature_texts} distinct texts "
            f"({train_set.num_tokens + held_set.num_tokens} tokens) in {feature_seconds:.0f}s"
        )
    else:
        train_set = PairDataset(model, train_pairs, rm.max_length)
        held_set = PairDataset(model, held_pairs, rm.max_length)
        control_set = PairDataset(model, control_pairs, rm.max_length)
    return train_set, held_set, control_set, feature_seconds, feature_texts


def _reward_model_module(model, rm: RewardModelSettings, optimizer, schedule):
    """The Lightning module: the ties objective and its optimization, from `reward_model`."""
    return RewardModelModule(
        model,
        lr=rm.lr,
        weight_decay=rm.weight_decay,
        warmup_steps=rm.warmup_steps,
        optimizer=optimizer,
        lr_scheduler=schedule,
        ties_lambda=rm.ties_lambda,
        ties_margin=rm.ties_margin,
        literal_paper_form=rm.literal_paper_form,
        center_rewards_coefficient=rm.center_rewards_coefficient,
        tie_threshold=rm.tie_threshold,
        head_lr=rm.head_lr,
    )


def _reward_model_trainer_kwargs(
    trainer: DictConfig, rm: RewardModelSettings, batches_per_epoch: int
) -> dict[str, Any]:
    """The `trainer` group for step-based training: validation every `reward_model.val_every_n_steps` steps
    (at most max_steps), checkpoints on, no sanity check; logging at most every step of a short run."""
    kwargs = OmegaConf.to_container(trainer, resolve=True)
    steps = kwargs["max_steps"]
    kwargs.update(
        max_epochs=-1,
        enable_checkpointing=True,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=min(rm.val_every_n_steps, steps),
        log_every_n_steps=max(1, min(kwargs.get("log_every_n_steps", 10), steps, batches_per_epoch)),
    )
    return kwargs


def _fit_reward_model(
    cfg: DictConfig, rm: RewardModelSettings, module, mode: str, train_loader, held_set, kwargs: dict[str, Any]
):
    """Lightning fit (resuming from <run_dir>/checkpoints/last.ckpt); returns (trainer, loggers, seconds).
    `cfg` is read for the loggers and the run directory."""
    run_dir = cfg.run_dir
    loggers = build_loggers(cfg, "reward_model")
    trainer = L.Trainer(
        **kwargs,
        logger=loggers or False,
        callbacks=checkpoint_callbacks(run_dir, rm.checkpoint_every),
        plugins=[AtomicCheckpointIO()],
    )
    ckpt = resume_checkpoint(run_dir)
    started = time.perf_counter()
    with warnings.catch_warnings():
        if mode == "frozen":  # the frozen backbone is in eval mode on purpose (ScalarRewardModel.train)
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(
            module,
            train_dataloaders=train_loader,
            val_dataloaders=held_set.loader(rm.eval_batch_size) if len(held_set) else None,
            ckpt_path=ckpt,
        )
    close_loggers(loggers)
    return trainer, loggers, time.perf_counter() - started


def _config_summary(rm: RewardModelSettings, mode: str, steps: int, backbone: str) -> dict[str, Any]:
    """What the saved reward model was trained with (the configured part of its summary); `backbone` is
    `backbone_name` of the model it was built on."""
    return {
        "stage": "reward_model",
        "source": rm.source,
        "data_path": rm.data_path,
        "objective": OBJECTIVE_LITERAL if rm.literal_paper_form else OBJECTIVE,
        "ties_lambda": rm.ties_lambda,
        "ties_margin": rm.ties_margin,
        "literal_paper_form": rm.literal_paper_form,
        "center_rewards_coefficient": rm.center_rewards_coefficient,
        "lr": rm.lr,
        "steps": steps,
        "batch_size": rm.batch_size,
        "max_length": rm.max_length,
        "tie_threshold": rm.tie_threshold,
        "lora": mode == "lora",
        "backbone": rm.backbone,
        "backbone_model": backbone,
        "train_backbone": mode,
        "pooling": rm.pooling,
    }


def _print_saved(out_dir: str, result: dict[str, Any]) -> None:
    """Where the reward model is, how a matrix uses it, where its logs are."""
    print(f"Saved reward model: {out_dir}")
    print(
        f"  use it in a matrix: scorer: {{_target_: quark_lightning.scorers.orm.ORMScorer, path: {out_dir}}}"
    )
    if "tensorboard_dir" in result:
        print(f"  inspect with:    tensorboard --logdir {os.path.dirname(result['tensorboard_dir'])}")


def run_reward_model(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate and save the reward model the config describes; returns paths and metrics."""
    rm = validate_reward_model_config(cfg)  # typed settings: the stage reads no other part of the node
    optimizer, schedule = training_factories(cfg.reward_model)  # a bad optimizer / schedule node stops here
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = cfg.run_dir
    os.makedirs(run_dir, exist_ok=True)

    train_pairs, held_pairs, corpus = load_pairs(rm)  # a bad row stops here, before any model is built
    model_cfg = backbone_model_config(cfg)
    _print_data_and_backbone(rm, cfg.model, model_cfg, train_pairs, held_pairs)
    mode = train_backbone_mode(rm, model_cfg)
    model = build_reward_model(rm, model_cfg, corpus)
    train_set, held_set, control_set, feature_seconds, feature_texts = _pair_datasets(
        model, rm, mode, train_pairs, held_pairs
    )
    before = held_out_metrics(model, held_set, control_set, rm)

    module = _reward_model_module(model, rm, optimizer, schedule)
    train_loader = train_set.loader(rm.batch_size, shuffle=True, seed=cfg.seed)
    kwargs = _reward_model_trainer_kwargs(cfg.trainer, rm, len(train_loader))
    steps = kwargs["max_steps"]
    trainer, loggers, train_seconds = _fit_reward_model(cfg, rm, module, mode, train_loader, held_set, kwargs)
    model.eval()
    after = held_out_metrics(model, held_set, control_set, rm)

    result: dict[str, Any] = {"run_dir": run_dir, "before": before, "after": after}
    if trainer.is_global_zero:
        summary = {
            **_config_summary(rm, mode, steps, backbone_name(model_cfg)),
            "feature_texts": feature_texts,
            "feature_seconds": round(feature_seconds, 1),
            "train_pairs": len(train_set),
            "held_out_pairs": len(held_set),
            "held_out_metrics_before": before,
            "held_out_metrics_after": after,
            "train_seconds": round(train_seconds, 1),  # the Lightning fit (after feature caching)
        }
        out_dir = os.path.join(run_dir, "reward_model")
        model.save_pretrained(out_dir, summary=summary)
        result["reward_model_dir"] = out_dir
        result.update(logger_locations(loggers))
        print_evaluation(rm, mode, steps, len(held_set), before, after, train_seconds, feature_seconds)
        _print_saved(out_dir, result)
    return result
