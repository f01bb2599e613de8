"""The `reward_model` config node as typed settings, and composing an experiment's config.

`RewardModelSettings` declares each key of conf/reward_model/*.yaml once, with its rule (config/typed.py);
`validate_reward_model_config(cfg)` builds it from the composed config after refusing unknown keys and
every wrong value at once (plus the rules that join two keys, and the `model` group where it is the
backbone), and the stage reads only the settings it returns. `compose_experiment(NAME)` is the train config
of `+experiment=NAME` (rm_orm, rm_online), also from inside train.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from quark_lightning.config.lora_settings import LoraSettings
from quark_lightning.config.tree import conf_dir
from quark_lightning.config.typed import (
    boolean,
    integer,
    is_int,
    number,
    one_of,
    optional,
    raise_problems,
    require,
    setting,
    subgroup,
    typed,
    typed_problems,
)
from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.loading import DTYPES
from quark_lightning.models.weight_sources import MODEL_KINDS, model_kind

RM = "reward_model"  # the config node of this stage
NODES = ("optimizer", "lr_scheduler")  # built by infra/optimizers.py and infra/schedules.py, not settings
POOLINGS = ("last", "mean")  # = scalar_rm.POOLINGS (not imported here: that module imports torch)
TRUE_OR_FALSE = "true or false"


@dataclass(frozen=True)
class FeedbackSettings:
    """reward_model.feedback: how liked / disliked answers become pairs (read with source=feedback)."""

    ties: bool = setting(True, boolean, TRUE_OR_FALSE)  # same-rating answers to a question are tie pairs
    max_pairs_per_question: int | None = setting(16, optional(integer(1)), "null or an integer >= 1")


@dataclass(frozen=True)
class RewardModelSettings:
    """Every key of the `reward_model` group but the optimizer and schedule nodes (`NODES`)."""

    # the data
    source: str = setting(
        "pairs", one_of(("pairs", "feedback")), "'pairs' or 'feedback'", "use reward_model=orm or =online."
    )
    data_path: str = setting(
        "bundled", lambda v: isinstance(v, str) and bool(v), "'bundled' or the path of a JSONL file"
    )
    feedback: FeedbackSettings = subgroup(FeedbackSettings)
    # the backbone and what trains
    backbone: str = setting(
        "policy",
        one_of(("tiny", "policy")),
        "'tiny' or 'policy'",
        f"pass {RM}.backbone=tiny (the tiny model built in code) or {RM}.backbone=policy (the run's "
        "`model`, e.g. model=smollm2).",
    )
    train_backbone: str = setting(
        "auto",
        one_of(("auto", "full", "lora", "frozen")),
        "one of 'auto', 'full', 'lora', 'frozen'",
        f"pass {RM}.train_backbone=frozen (head only, on cached features), =lora, =full or =auto (full for "
        "the tiny model, frozen for a pretrained one).",
    )
    pooling: str = setting("last", one_of(POOLINGS), "'last' or 'mean' (what the head reads)")
    feature_batch_size: int = setting(
        16, integer(1), "an integer >= 1 (texts per backbone forward when caching frozen features)"
    )
    head_hidden_size: int | None = setting(None, optional(integer(1)), "null or an integer >= 1")
    lora: LoraSettings = subgroup(LoraSettings)  # a LoRA adapter on the backbone, merged on save
    # the ties objective
    ties_lambda: float = setting(0.5, number(0), "a number >= 0 (the λ of L_same)")
    ties_margin: float = setting(0.0, number(0), "a number >= 0 (the margin m)")
    literal_paper_form: bool = setting(False, boolean, TRUE_OR_FALSE)
    center_rewards_coefficient: float = setting(0.0, number(0), "a number >= 0")
    # training
    lr: float = setting(1.0e-3, number(0, low_open=True), "a learning rate > 0")
    head_lr: float | None = setting(None, optional(number(0, low_open=True)), "null or a number > 0")
    weight_decay: float = setting(0.0, number(0), "a number >= 0")
    warmup_steps: int = setting(10, integer(0), "an integer >= 0")
    steps: int = setting(150, integer(1), "an integer >= 1 (optimizer steps)")
    batch_size: int = setting(16, integer(1), "an integer >= 1")
    max_length: int = setting(384, integer(16), "an integer >= 16 (tokens)")
    checkpoint_every: int = setting(25, integer(1), "an integer >= 1 (steps)")
    # the held-out split and its evaluation
    val_fraction: float = setting(
        0.2, number(0, 1, low_open=True, high_open=True), "a number in (0, 1) (share of questions held out)"
    )
    split_seed: int = setting(0, integer(), "an integer")
    eval_batch_size: int = setting(32, integer(1), "an integer >= 1")
    tie_threshold: float = setting(0.5, number(0, low_open=True), "a number > 0")
    val_every_n_steps: int = setting(50, integer(1), "an integer >= 1")

    def cross_key_problems(self) -> list[str]:
        """The rule that joins two keys: LoRA with a backbone that trains in full or not at all."""
        if self.lora.enabled and self.train_backbone in ("full", "frozen"):
            return [
                f"{RM}.lora.enabled: got True, but {RM}.train_backbone is {self.train_backbone!r}. Fix: pass "
                f"{RM}.train_backbone=lora (or auto), or {RM}.lora.enabled=false."
            ]
        return []


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


def validate_reward_model_config(cfg: DictConfig) -> RewardModelSettings:
    """The stage's settings, or one ConfigError listing every wrong value (the node's keys, the rules that
    join keys, the `model` group where it is the backbone, trainer.max_steps) with its fix."""
    node = OmegaConf.select(cfg, RM)
    if node is None:
        raise ConfigError(
            "reward_model: missing. Fix: use +experiment=rm_orm or +experiment=rm_online "
            "(or add +reward_model=orm to the command line)."
        )
    values = OmegaConf.to_container(node, resolve=True)
    p = typed_problems(RewardModelSettings, values, RM, allowed=NODES)
    settings = None if p else typed(RewardModelSettings, values, RM, allowed=NODES)
    if settings is not None:
        p += settings.cross_key_problems()
    _rm_model_problems(p, cfg)
    require(
        p,
        cfg,
        "trainer.max_steps",
        lambda v: is_int(v) and v >= 1,
        "an integer >= 1 (optimizer steps)",
        "pass reward_model.steps=<n> (trainer.max_steps follows it).",
    )
    raise_problems(p, RM)
    return settings


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
