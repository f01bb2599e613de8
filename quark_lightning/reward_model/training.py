"""Stage `reward_model`: train the scalar ORM (or the online-feedback RM) and save it as an HF directory.

    validate config -> load + validate pairs (or feedback -> pairs) -> split by question (seeded)
    -> build the backbone (tiny model or the run's `model`) + 2-layer head -> evaluate held-out
    -> Lightning fit with the ties loss (atomic checkpoints every `checkpoint_every` steps in
    <run_dir>/checkpoints; the same command again resumes from last.ckpt) -> evaluate held-out
    -> save <run_dir>/reward_model

Held-out evaluation (before and after training; printed, and saved in reward_model.json's summary):
pair accuracy, tie accuracy, mean |delta| on ties, pair margin, reward std, and the length-controlled
accuracy: the share of held-out preferred pairs whose rejected answer, padded with content-free filler
(quark_lightning/data/length_control.py, sentences never used in training data) to at least the
preferred answer's words + 50, still scores below the preferred answer. A reward model that mostly
measures length scores near 0 there however high its pair accuracy.

`python train.py +experiment=rm_orm` (preference pairs) or `+experiment=rm_online` (online feedback).
The saved directory is what `quark_lightning.scorers.orm.ORMScorer(path=...)` loads.

The backbone (`reward_model.backbone`):
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

import math
import os
import time
import warnings
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.tree import conf_dir
from quark_lightning.config.validate import _require, is_int, is_num
from quark_lightning.data.length_control import CONTROL_EXTRA_WORDS, length_control_pairs
from quark_lightning.data.preferences import (
    describe,
    feedback_to_pairs,
    load_online_feedback,
    load_preference_pairs,
    pair_texts,
    split_by_question,
)
from quark_lightning.infra.checkpointing import AtomicCheckpointIO, check_checkpoint
from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.loading import DTYPES
from quark_lightning.models.weight_sources import MODEL_KINDS, model_config, model_kind

RM = "reward_model"  # the config node of this stage
SOURCES = ("pairs", "feedback")
BACKBONES = ("tiny", "policy")
TRAIN_BACKBONE = ("auto", "full", "lora", "frozen")
POOLINGS = ("last", "mean")  # = modules.reward_model.POOLINGS (not imported here: that module imports torch)
TINY_MODEL_CONFIG = str(conf_dir() / "model" / "tiny.yaml")
RM_CONFIG = str(conf_dir() / "reward_model" / "orm.yaml")
SHIPPED_TRAINING_NODES = ("optimizer", "lr_scheduler")  # in RM_CONFIG; see cache_key_yaml
OBJECTIVE = "J = L_diff + lambda * L_same; L_diff = -log s(r_w - r_l); L_same = -log s(m - |r_1 - r_2|)"
OBJECTIVE_LITERAL = "J = L_diff + lambda * L_same; L_same = -log s(|r_1 - r_2|) (literal paper transcription)"
REPORTED = (
    ("pair_accuracy", "pair accuracy"),
    ("tie_accuracy", "tie accuracy"),
    ("tie_abs_delta", "mean |delta| on ties"),
    ("pair_margin", "pair margin"),
    ("reward_std", "reward std"),
    ("length_controlled_accuracy", "length-controlled acc."),
)


def validate_reward_model_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every wrong value of the reward-model stage."""
    p: list[str] = []
    if OmegaConf.select(cfg, "reward_model") is None:
        raise ConfigError(
            "reward_model: missing. Fix: use +experiment=rm_orm or +experiment=rm_online "
            "(or add +reward_model=orm to the command line)."
        )
    _rm_data_problems(p, cfg)
    _rm_objective_problems(p, cfg)
    _rm_training_problems(p, cfg)
    _rm_feedback_problems(p, cfg)
    _rm_backbone_problems(p, cfg)
    _rm_model_problems(p, cfg)
    _require(
        p,
        cfg,
        "trainer.max_steps",
        lambda v: is_int(v) and v >= 1,
        "an integer >= 1 (optimizer steps)",
        "pass reward_model.steps=<n> (trainer.max_steps follows it).",
    )
    if p:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(p))


def _rm_data_problems(p: list[str], cfg: DictConfig) -> None:
    """reward_model.source and .data_path: what the pairs are built from."""
    rm = RM
    _require(
        p,
        cfg,
        f"{rm}.source",
        lambda v: v in SOURCES,
        "'pairs' or 'feedback'",
        "use reward_model=orm or =online.",
    )
    _require(
        p,
        cfg,
        f"{rm}.data_path",
        lambda v: isinstance(v, str) and v,
        "'bundled' or the path of a JSONL file",
    )


def _rm_objective_problems(p: list[str], cfg: DictConfig) -> None:
    """The ties objective: λ, the margin m, the literal paper form, reward centering."""
    rm = RM
    _require(p, cfg, f"{rm}.ties_lambda", lambda v: is_num(v) and v >= 0, "a number >= 0 (the λ of L_same)")
    _require(p, cfg, f"{rm}.ties_margin", lambda v: is_num(v) and v >= 0, "a number >= 0 (the margin m)")
    _require(p, cfg, f"{rm}.literal_paper_form", lambda v: isinstance(v, bool), "true or false")
    _require(p, cfg, f"{rm}.center_rewards_coefficient", lambda v: is_num(v) and v >= 0, "a number >= 0")


def _rm_training_problems(p: list[str], cfg: DictConfig) -> None:
    """Optimizer, batches, lengths, the held-out split and its evaluation, checkpoints, the head's size."""
    rm = RM
    _require(p, cfg, f"{rm}.lr", lambda v: is_num(v) and v > 0, "a learning rate > 0")
    _require(p, cfg, f"{rm}.head_lr", lambda v: v is None or (is_num(v) and v > 0), "null or a number > 0")
    _require(p, cfg, f"{rm}.weight_decay", lambda v: is_num(v) and v >= 0, "a number >= 0")
    _require(p, cfg, f"{rm}.warmup_steps", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    _require(p, cfg, f"{rm}.batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(p, cfg, f"{rm}.eval_batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(p, cfg, f"{rm}.max_length", lambda v: is_int(v) and v >= 16, "an integer >= 16 (tokens)")
    _require(
        p,
        cfg,
        f"{rm}.val_fraction",
        lambda v: is_num(v) and 0 < v < 1,
        "a number in (0, 1) (share of questions held out)",
    )
    _require(p, cfg, f"{rm}.tie_threshold", lambda v: is_num(v) and v > 0, "a number > 0")
    _require(p, cfg, f"{rm}.val_every_n_steps", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    _require(p, cfg, f"{rm}.checkpoint_every", lambda v: is_int(v) and v >= 1, "an integer >= 1 (steps)")
    _require(
        p,
        cfg,
        f"{rm}.head_hidden_size",
        lambda v: v is None or (is_int(v) and v >= 1),
        "null or an integer >= 1",
    )


def _rm_feedback_problems(p: list[str], cfg: DictConfig) -> None:
    """reward_model.feedback.*: how feedback becomes pairs (only with source=feedback)."""
    rm = RM
    if OmegaConf.select(cfg, f"{rm}.source") == "feedback":
        _require(p, cfg, f"{rm}.feedback.ties", lambda v: isinstance(v, bool), "true or false")
        _require(
            p,
            cfg,
            f"{rm}.feedback.max_pairs_per_question",
            lambda v: v is None or (is_int(v) and v >= 1),
            "null or an integer >= 1",
        )


def _rm_backbone_problems(p: list[str], cfg: DictConfig) -> None:
    """The backbone, how it trains, the pooling, feature caching, and LoRA (which must agree)."""
    rm = RM
    _require(
        p,
        cfg,
        f"{rm}.backbone",
        lambda v: v in BACKBONES,
        "'tiny' or 'policy'",
        f"pass {rm}.backbone=tiny (the tiny model built in code) or {rm}.backbone=policy (the run's "
        "`model`, e.g. model=smollm2).",
    )
    _require(
        p,
        cfg,
        f"{rm}.train_backbone",
        lambda v: v in TRAIN_BACKBONE,
        "one of 'auto', 'full', 'lora', 'frozen'",
        f"pass {rm}.train_backbone=frozen (head only, on cached features), =lora, =full or =auto (full for "
        "the tiny model, frozen for a pretrained one).",
    )
    _require(p, cfg, f"{rm}.pooling", lambda v: v in POOLINGS, "'last' or 'mean' (what the head reads)")
    _require(
        p,
        cfg,
        f"{rm}.feature_batch_size",
        lambda v: is_int(v) and v >= 1,
        "an integer >= 1 (texts per backbone forward when caching frozen features)",
    )
    mode = OmegaConf.select(cfg, f"{rm}.train_backbone")
    lora_on = bool(OmegaConf.select(cfg, f"{rm}.lora.enabled"))
    if lora_on and mode in ("full", "frozen"):
        p.append(
            f"{rm}.lora.enabled: got True, but {rm}.train_backbone is {mode!r}. Fix: pass "
            f"{rm}.train_backbone=lora (or auto), or {rm}.lora.enabled=false."
        )
    if lora_on or mode == "lora":
        _require(p, cfg, f"{rm}.lora.r", lambda v: is_int(v) and v > 0, "a positive integer")
        _require(p, cfg, f"{rm}.lora.alpha", lambda v: is_num(v) and v > 0, "a positive number")


def _rm_model_problems(p: list[str], cfg: DictConfig) -> None:
    """The `model` group, checked only where it is the backbone: backbone=policy, or the tiny model itself."""
    target_problems: list[str] = []
    kind = _model_kind(target_problems, cfg)
    if OmegaConf.select(cfg, f"{RM}.backbone") != "tiny" or kind == "tiny":
        p += target_problems
        if kind not in MODEL_KINDS and not target_problems:
            p.append(
                f"model.kind: got {kind!r}, expected one of {list(MODEL_KINDS)}. "
                "Fix: use model=tiny, model=smollm2 or model=hf."
            )
        if kind == "hf":
            _require(
                p,
                cfg,
                "model.name_or_path",
                lambda v: isinstance(v, str) and v and v != "???",
                "a hub name or a local directory",
            )
        _require(p, cfg, "model.dtype", lambda v: v in DTYPES, f"one of {sorted(DTYPES)}")


def _model_kind(problems: list[str], cfg: DictConfig) -> str | None:
    """`model.kind`, or the kind of `model._target_`'s source; a wrong target is added to `problems`."""
    model = OmegaConf.select(cfg, "model")
    if model is None:
        return None
    try:
        return model_kind(model)
    except ConfigError as err:
        problems.append(str(err))
        return None


def load_pairs(rm: DictConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
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
        from quark_lightning.data.schema import DataValidationError

        raise DataValidationError(
            [
                f"{rm.data_path}: no training pairs could be built from the feedback: a question needs a liked "
                "and a disliked response (or two with the same rating, with reward_model.feedback.ties=true)"
            ]
        )
    return train, held_out, pair_texts(records)


def backbone_model_config(cfg: DictConfig) -> DictConfig:
    """The model config the reward model is built on: the run's `model` (backbone=policy, or when it is
    the tiny model), else the tiny model of conf/model/tiny.yaml in the run's model.cache_dir."""
    if cfg.reward_model.backbone == "policy" or model_kind(cfg.model) == "tiny":
        return cfg.model
    tiny = OmegaConf.load(TINY_MODEL_CONFIG)
    tiny.cache_dir = cfg.model.cache_dir
    return tiny


def train_backbone_mode(cfg: DictConfig) -> str:
    """full | lora | frozen: `reward_model.train_backbone`, with auto resolved (see the module docstring)."""
    rm = cfg.reward_model
    if rm.train_backbone != "auto":
        return rm.train_backbone
    if rm.get("lora") is not None and rm.lora.get("enabled"):
        return "lora"
    return "full" if model_kind(backbone_model_config(cfg)) == "tiny" else "frozen"


def backbone_name(cfg: DictConfig) -> str:
    """tiny, smollm2, or the hub name / directory of model=hf."""
    model_cfg = backbone_model_config(cfg)
    kind = model_kind(model_cfg)
    return str(model_cfg.get("name_or_path")) if kind == "hf" else str(kind)


def describe_backbone(cfg: DictConfig) -> str:
    """E.g. 'smollm2 (reward_model.backbone=policy, train_backbone=frozen, pooling=last)', for the log."""
    return (
        f"{backbone_name(cfg)} (reward_model.backbone={cfg.reward_model.backbone}, "
        f"train_backbone={train_backbone_mode(cfg)}, pooling={cfg.reward_model.pooling})"
    )


def build_reward_model(cfg: DictConfig, corpus: list[str]):
    from quark_lightning.models.weight_sources import resolve_model_path
    from quark_lightning.reward_model.scalar_rm import ScalarRewardModel

    model_cfg = backbone_model_config(cfg)
    path = resolve_model_path(model_cfg, corpus)  # the source model._target_ names (models/weight_sources.py)
    rm = cfg.reward_model
    mode = train_backbone_mode(cfg)
    lora = dict(OmegaConf.to_container(rm.lora, resolve=True)) if rm.get("lora") else {}
    lora["enabled"] = mode == "lora"
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


def training_factories(rm: DictConfig):
    """(`reward_model.optimizer`, `reward_model.lr_scheduler`) built as `_partial_` factories; None where
    a node is null or absent (AdamW and linear_warmup from the flat keys, infra/optimizers.py)."""
    from quark_lightning.infra.optimizers import optimizer_factory, scheduler_factory

    return (
        optimizer_factory(rm.get("optimizer"), "reward_model.optimizer"),
        scheduler_factory(rm.get("lr_scheduler"), "reward_model.lr_scheduler"),
    )


def format_table(before: dict[str, float], after: dict[str, float]) -> str:
    def fmt(v: float) -> str:
        return "    n/a" if v is None or math.isnan(v) else f"{v:7.3f}"

    lines = [f"  {'':<22} {'before':>7} {'after':>7}"]
    lines += [f"  {label:<22} {fmt(before[k])} {fmt(after[k])}" for k, label in REPORTED]
    return "\n".join(lines)


def checkpoint_callbacks(run_dir: str, every: int) -> list[L.Callback]:
    """`<run_dir>/checkpoints/last.ckpt` every `every` steps (written atomically by AtomicCheckpointIO),
    plus the random streams, so a killed reward-model run resumes exactly, as the SFT and RL stages do."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from quark_lightning.infra.rng_state import RNGStateCallback

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
    cfg: DictConfig, train_pairs: list[dict[str, Any]], held_pairs: list[dict[str, Any]]
) -> None:
    """The pairs of each split, and which backbone trains how (with what the config does not apply)."""
    rm = cfg.reward_model
    print(f"Reward model ({rm.source}): train {describe(train_pairs)}")
    print(f"Reward model ({rm.source}): held-out {describe(held_pairs)}")
    if rm.backbone == "tiny" and model_kind(cfg.model) != "tiny":
        print(
            f"Reward model backbone: the tiny model, not model={model_kind(cfg.model)} "
            "(pass reward_model.backbone=policy to train on the run's model)"
        )
    print(f"Reward model backbone: {describe_backbone(cfg)}")
    if rm.backbone == "policy" and cfg.model.get("adapter_path"):
        print(
            f"  (model.adapter_path={cfg.model.adapter_path} is not applied: the backbone is the base model)"
        )


def _pair_datasets(model, rm: DictConfig, mode: str, train_pairs: list, held_pairs: list):
    """(train set, held-out set, length-control set, feature seconds, feature texts). With a frozen
    backbone: the pooled features of each distinct text, one backbone forward each, for the head to train
    on; else tokenized pairs (feature seconds and texts are 0). The length-control set holds each held-out
    preferred pair as (preferred answer, rejected answer padded with filler to at least the preferred
    one's words + 50), see `length_control_pairs`; its features are not counted in the feature totals."""
    from quark_lightning.reward_model.scalar_rm import FeaturePairDataset, PairDataset

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


def held_out_metrics(model, held_set, control_set, rm: DictConfig) -> dict[str, float]:
    """`evaluate_pairs` on the held-out pairs, plus `length_controlled_accuracy`: the pair accuracy on the
    length-control set (the share of held-out preferred pairs whose rejected answer, padded with filler
    to be 50+ words longer than the preferred one, still scores below it; NaN without preferred pairs)."""
    from quark_lightning.reward_model.scalar_rm import evaluate_pairs

    metrics = evaluate_pairs(model, held_set, rm.eval_batch_size, rm.tie_threshold)
    control = evaluate_pairs(model, control_set, rm.eval_batch_size, rm.tie_threshold)
    metrics["length_controlled_accuracy"] = control["pair_accuracy"]
    return metrics


def _reward_model_module(model, rm: DictConfig, optimizer, schedule):
    """The Lightning module: the ties objective and its optimization, from `reward_model`."""
    from quark_lightning.reward_model.scalar_rm import RewardModelModule

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


def _reward_model_trainer_kwargs(cfg: DictConfig, batches_per_epoch: int) -> dict[str, Any]:
    """`trainer` for step-based training: validation every `reward_model.val_every_n_steps` steps (at most
    max_steps), checkpoints on, no sanity check; logging at most every step of a short run."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    steps = kwargs["max_steps"]
    kwargs.update(
        max_epochs=-1,
        enable_checkpointing=True,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=min(cfg.reward_model.val_every_n_steps, steps),
        log_every_n_steps=max(1, min(kwargs.get("log_every_n_steps", 10), steps, batches_per_epoch)),
    )
    return kwargs


def _fit_reward_model(cfg: DictConfig, module, mode: str, train_loader, held_set, kwargs: dict[str, Any]):
    """Lightning fit (resuming from <run_dir>/checkpoints/last.ckpt); returns (trainer, loggers, seconds)."""
    from quark_lightning.infra.loggers import build_loggers, close_loggers

    rm, run_dir = cfg.reward_model, cfg.run_dir
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


def _config_summary(cfg: DictConfig, mode: str, steps: int) -> dict[str, Any]:
    """What the saved reward model was trained with (the configured part of its summary)."""
    rm = cfg.reward_model
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
        "backbone_model": backbone_name(cfg),
        "train_backbone": mode,
        "pooling": rm.pooling,
    }


def _print_evaluation(
    rm: DictConfig,
    mode: str,
    steps: int,
    held_pairs: int,
    before: dict[str, float],
    after: dict[str, float],
    train_seconds: float,
    feature_seconds: float,
) -> None:
    """The held-out metrics before and after training, and the headline ones."""
    lam = f"lambda={rm.ties_lambda}, m={rm.ties_margin}" + (
        ", literal paper form" if rm.literal_paper_form else ""
    )
    took = f"{train_seconds:.0f}s" + (f" + {feature_seconds:.0f}s of features" if mode == "frozen" else "")
    print(f"\nHeld-out evaluation ({held_pairs} pairs; {lam}; {steps} steps, {took}):")
    print(format_table(before, after))
    print(
        f"held-out pair accuracy: {after['pair_accuracy']:.3f}  "
        f"tie accuracy: {after['tie_accuracy']:.3f}  "
        f"mean |delta| on ties: {after['tie_abs_delta']:.3f}"
    )
    print(
        f"length-controlled accuracy: {after['length_controlled_accuracy']:.3f} (held-out rejected answers "
        f"padded with filler to >= the preferred answer's words + {CONTROL_EXTRA_WORDS} still score below it)"
    )


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
    validate_reward_model_config(cfg)
    rm = cfg.reward_model
    optimizer, schedule = training_factories(rm)  # a bad optimizer / lr_scheduler node stops here
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = cfg.run_dir
    os.makedirs(run_dir, exist_ok=True)

    train_pairs, held_pairs, corpus = load_pairs(rm)  # a bad row stops here, before any model is built
    _print_data_and_backbone(cfg, train_pairs, held_pairs)
    mode = train_backbone_mode(cfg)
    model = build_reward_model(cfg, corpus)
    train_set, held_set, control_set, feature_seconds, feature_texts = _pair_datasets(
        model, rm, mode, train_pairs, held_pairs
    )
    before = held_out_metrics(model, held_set, control_set, rm)

    module = _reward_model_module(model, rm, optimizer, schedule)
    train_loader = train_set.loader(rm.batch_size, shuffle=True, seed=cfg.seed)
    kwargs = _reward_model_trainer_kwargs(cfg, len(train_loader))
    steps = kwargs["max_steps"]
    trainer, loggers, train_seconds = _fit_reward_model(cfg, module, mode, train_loader, held_set, kwargs)
    model.eval()
    after = held_out_metrics(model, held_set, control_set, rm)

    result: dict[str, Any] = {"run_dir": run_dir, "before": before, "after": after}
    if trainer.is_global_zero:
        from quark_lightning.infra.loggers import logger_locations

        summary = {
            **_config_summary(cfg, mode, steps),
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
        _print_evaluation(rm, mode, steps, len(held_set), before, after, train_seconds, feature_seconds)
        _print_saved(out_dir, result)
    return result


def compose_experiment(experiment: str, overrides: list[str] | None = None) -> DictConfig:
    """The train config with `+experiment=NAME` (and overrides) composed, also from inside train.py.

    `run_dir` is left unresolved (`${hydra:...}`): set it before use."""

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = conf_dir()
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()  # inside `python train.py` Hydra is initialized already
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose(config_name="train", overrides=[f"+experiment={experiment}", *(overrides or [])])
    finally:
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


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

    from quark_lightning.data.preferences import BUNDLED_FEEDBACK, BUNDLED_PAIRS, resolve
    from quark_lightning.models.tiny import default_cache_dir

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
    name = os.path.basename(backbone_name(cfg).rstrip("/"))
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
    and an unchanged one is reused. Used by `ORMScorer(train_experiment=..., backbone=..., policy_model=...)`
    so a matrix can name a reward model that does not exist yet (the embedded demo does this).
    """
    from omegaconf import open_dict

    cfg, run_dir = reward_model_run_dir(experiment, cache_dir, overrides, backbone, model)
    saved = run_dir / "reward_model"
    if (saved / "reward_model.json").exists():
        return str(saved)
    print(f"Training the reward model of +experiment={experiment} once (cached in {run_dir})")
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    from quark_lightning.infra.checkpointing import capture_rng_state, restore_rng_state

    streams = capture_rng_state()  # training it must not change the calling run's random streams:
    try:  # a first run (trains the RM) and a rerun (finds it cached) then sample the same answers
        return run_reward_model(cfg)["reward_model_dir"]
    finally:
        restore_rng_state(streams)
