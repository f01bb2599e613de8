"""The `reward_model` config node: composing an experiment's config and validating the node.

`compose_experiment(NAME)` is the train config of `+experiment=NAME` (rm_orm, rm_online), also from inside
train.py. `validate_reward_model_config` checks every value the `reward_model` stage reads (the data, the
ties objective, training and the held-out split, feedback -> pairs, the backbone and LoRA, and the `model`
group where it is the backbone) and raises one ConfigError listing every wrong value with its fix.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.tree import conf_dir
from quark_lightning.config.typed import is_int, is_num, require
from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.loading import DTYPES
from quark_lightning.models.weight_sources import MODEL_KINDS, model_kind

RM = "reward_model"  # the config node of this stage
SOURCES = ("pairs", "feedback")
BACKBONES = ("tiny", "policy")
TRAIN_BACKBONE = ("auto", "full", "lora", "frozen")
POOLINGS = ("last", "mean")  # = scalar_rm.POOLINGS (not imported here: that module imports torch)


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
    require(
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
    require(
        p,
        cfg,
        f"{rm}.source",
        lambda v: v in SOURCES,
        "'pairs' or 'feedback'",
        "use reward_model=orm or =online.",
    )
    require(
        p,
        cfg,
        f"{rm}.data_path",
        lambda v: isinstance(v, str) and v,
        "'bundled' or the path of a JSONL file",
    )


def _rm_objective_problems(p: list[str], cfg: DictConfig) -> None:
    """The ties objective: λ, the margin m, the literal paper form, reward centering."""
    rm = RM
    require(p, cfg, f"{rm}.ties_lambda", lambda v: is_num(v) and v >= 0, "a number >= 0 (the λ of L_same)")
    require(p, cfg, f"{rm}.ties_margin", lambda v: is_num(v) and v >= 0, "a number >= 0 (the margin m)")
    require(p, cfg, f"{rm}.literal_paper_form", lambda v: isinstance(v, bool), "true or false")
    require(p, cfg, f"{rm}.center_rewards_coefficient", lambda v: is_num(v) and v >= 0, "a number >= 0")


def _rm_training_problems(p: list[str], cfg: DictConfig) -> None:
    """Optimizer, batches, lengths, the held-out split and its evaluation, checkpoints, the head's size."""
    rm = RM
    require(p, cfg, f"{rm}.lr", lambda v: is_num(v) and v > 0, "a learning rate > 0")
    require(p, cfg, f"{rm}.head_lr", lambda v: v is None or (is_num(v) and v > 0), "null or a number > 0")
    require(p, cfg, f"{rm}.weight_decay", lambda v: is_num(v) and v >= 0, "a number >= 0")
    require(p, cfg, f"{rm}.warmup_steps", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    require(p, cfg, f"{rm}.batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    require(p, cfg, f"{rm}.eval_batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    require(p, cfg, f"{rm}.max_length", lambda v: is_int(v) and v >= 16, "an integer >= 16 (tokens)")
    require(
        p,
        cfg,
        f"{rm}.val_fraction",
        lambda v: is_num(v) and 0 < v < 1,
        "a number in (0, 1) (share of questions held out)",
    )
    require(p, cfg, f"{rm}.tie_threshold", lambda v: is_num(v) and v > 0, "a number > 0")
    require(p, cfg, f"{rm}.val_every_n_steps", lambda v: is_int(v) and v >= 1, "an integer >= 1")
    require(p, cfg, f"{rm}.checkpoint_every", lambda v: is_int(v) and v >= 1, "an integer >= 1 (steps)")
    require(
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
        require(p, cfg, f"{rm}.feedback.ties", lambda v: isinstance(v, bool), "true or false")
        require(
            p,
            cfg,
            f"{rm}.feedback.max_pairs_per_question",
            lambda v: v is None or (is_int(v) and v >= 1),
            "null or an integer >= 1",
        )


def _rm_backbone_problems(p: list[str], cfg: DictConfig) -> None:
    """The backbone, how it trains, the pooling, feature caching, and LoRA (which must agree)."""
    rm = RM
    require(
        p,
        cfg,
        f"{rm}.backbone",
        lambda v: v in BACKBONES,
        "'tiny' or 'policy'",
        f"pass {rm}.backbone=tiny (the tiny model built in code) or {rm}.backbone=policy (the run's "
        "`model`, e.g. model=smollm2).",
    )
    require(
        p,
        cfg,
        f"{rm}.train_backbone",
        lambda v: v in TRAIN_BACKBONE,
        "one of 'auto', 'full', 'lora', 'frozen'",
        f"pass {rm}.train_backbone=frozen (head only, on cached features), =lora, =full or =auto (full for "
        "the tiny model, frozen for a pretrained one).",
    )
    require(p, cfg, f"{rm}.pooling", lambda v: v in POOLINGS, "'last' or 'mean' (what the head reads)")
    require(
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
        require(p, cfg, f"{rm}.lora.r", lambda v: is_int(v) and v > 0, "a positive integer")
        require(p, cfg, f"{rm}.lora.alpha", lambda v: is_num(v) and v > 0, "a positive number")


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
            require(
                p,
                cfg,
                "model.name_or_path",
                lambda v: isinstance(v, str) and v and v != "???",
                "a hub name or a local directory",
            )
        require(p, cfg, "model.dtype", lambda v: v in DTYPES, f"one of {sorted(DTYPES)}")


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
