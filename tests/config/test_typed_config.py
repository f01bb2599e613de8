"""config/typed.py: a settings key's rule is declared once, on its dataclass field, and one mechanism checks
it wherever the settings come from (built directly, built from a config group, or the composed config
validated before a run)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from quark_lightning.config.typed import (
    boolean,
    check,
    integer,
    number,
    one_of,
    optional,
    rule,
    typed,
    unknown_keys,
    value_problems,
)
from quark_lightning.grpo.grpo_config import GRPOConfig
from quark_lightning.infra.errors import ConfigError
from quark_lightning.judges.settings import JudgeConfig
from quark_lightning.loop.loop_settings import LoopSettings


@dataclass(frozen=True)
class Toy:
    steps: int = field(default=1, metadata=rule(integer(1), "an integer >= 1"))
    share: float = field(default=0.5, metadata=rule(number(0, 1, high_open=True), "a number in [0, 1)"))
    mode: str = field(default="a", metadata=rule(one_of("ab"), "a or b", "pass toy.mode=a"))
    cap: float | None = field(default=None, metadata=rule(optional(number(0, low_open=True)), "null or > 0"))
    flag: bool = field(default=False, metadata=rule(boolean, "true or false"))
    free: str = "anything"  # no rule: not checked

    def __post_init__(self):
        check(self, "toy")


def test_the_predicates_at_their_bounds():
    assert integer(1)(1) and not integer(1)(0) and not integer(1)(True) and not integer(1)(1.0)
    inside = number(0, 1, high_open=True)
    assert inside(0) and inside(0.999) and not inside(1) and not inside(-1e-9)
    assert not inside(float("nan")) and not number()(float("inf")) and not number()(False)
    assert number(0, low_open=True)(1e-12) and not number(0, low_open=True)(0)
    assert optional(integer(0))(None) and not optional(integer(0))(-1)
    assert boolean(False) and not boolean("false") and not boolean(0)


def test_every_wrong_value_is_named_at_once_in_the_house_style():
    with pytest.raises(ConfigError) as err:
        Toy(steps=0, share=1.0, mode="c", cap=0, flag="no", free=None)
    assert str(err.value).splitlines() == [
        "invalid toy settings:",
        "  - toy.steps: got 0, expected an integer >= 1. Fix: pass toy.steps=<an integer >= 1>.",
        "  - toy.share: got 1.0, expected a number in [0, 1). Fix: pass toy.share=<a number in [0, 1)>.",
        "  - toy.mode: got 'c', expected a or b. Fix: pass toy.mode=a",
        "  - toy.cap: got 0, expected null or > 0. Fix: pass toy.cap=<null or > 0>.",
        "  - toy.flag: got 'no', expected true or false. Fix: pass toy.flag=<true or false>.",
    ]
    with pytest.raises(ConfigError, match=r"^toy\.steps: got -2, expected an integer >= 1\. Fix"):
        Toy(steps=-2)  # one problem: the message is that problem


def test_a_group_with_unknown_keys_and_bad_values_is_refused_whole_and_absent_keys_take_defaults():
    assert typed(Toy, {"steps": 3}, "toy") == Toy(steps=3)
    assert value_problems(Toy, {}, "toy") == []  # absent keys are not checked: their defaults apply
    with pytest.raises(ConfigError) as err:
        typed(Toy, {"stesp": 3, "share": 2, "name": "x"}, "toy", allowed=("name",))
    lines = str(err.value).splitlines()
    assert lines[1].startswith("  - toy.stesp: unknown key; did you mean steps? Fix: remove it or use one of")
    assert "name" in lines[1] and lines[2].startswith("  - toy.share: got 2")
    assert len(lines) == 3  # `name` is allowed; nothing else is wrong
    assert unknown_keys(["_target_", "steps"], ["steps"], "toy") == []  # Hydra's own keys pass


def test_the_algorithm_group_is_checked_by_its_dataclass_in_the_run_and_when_built():
    from quark_lightning.config.validate import validate_config
    from tests.config.test_config import compose_cfg

    for override, kwargs in [
        ("algorithm.epsilon=1.5", {"epsilon": 1.5}),
        ("algorithm.vllm_importance_sampling_cap=0.5", {"vllm_importance_sampling_cap": 0.5}),
        ("algorithm.delta=1.1", {"delta": 1.1}),
        ("algorithm.gradient_checkpointing=yes", {"gradient_checkpointing": "yes"}),
    ]:
        with pytest.raises(ConfigError) as built:
            GRPOConfig(**kwargs)
        with pytest.raises(ConfigError) as run:
            validate_config(compose_cfg("+experiment=smoke", override))
        assert str(built.value) in str(run.value)  # one declaration, the same message both ways


def test_the_closed_loop_and_judge_settings_use_the_same_mechanism():
    with pytest.raises(ConfigError, match=r"callbacks\.closed_loop\.greedy: got 'false', expected true or false"):
        LoopSettings.of({"greedy": "false"})  # a string would have counted as true
    with pytest.raises(ConfigError, match=r"callbacks\.closed_loop\.probe_promts: unknown key; did you mean probe_prompts"):
        LoopSettings.of({"probe_promts": 3})
    with pytest.raises(ConfigError, match=r"judge\.timeout_s: got inf, expected a number of seconds > 0"):
        JudgeConfig(timeout_s=float("inf"))
    assert isinstance(ConfigError("x"), ValueError)  # callers that catch ValueError still do


def test_the_warmstart_group_is_typed_and_checked_only_where_it_runs():
    from quark_lightning.config.validate import validate_config
    from tests.config.test_config import compose_cfg

    cases = [
        (["warmstart=sft", "warmstart.max_length=4"], r"warmstart\.max_length: got 4, expected an integer >= 8"),
        (["warmstart=sft", "+warmstart.max_lenght=300"], r"warmstart\.max_lenght: unknown key; did you mean max_length\?"),
        (["warmstart.enabled=yes"], r"warmstart\.enabled: got 'yes', expected true or false"),  # was truthy
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_config(compose_cfg("+experiment=smoke", *overrides))
    validate_config(compose_cfg("+experiment=smoke", "warmstart=none"))  # off: nothing else to check
    validate_config(compose_cfg("+experiment=smoke", "warmstart=sft"))


def test_nested_groups_are_checked_key_by_key_under_their_dotted_names():
    from quark_lightning.reward_model.rm_settings import RewardModelSettings

    group = {"lr": 0.1, "lora": {"r": 0, "alhpa": 4}, "feedback": 3, "ties_lamda": 1.0}
    with pytest.raises(ConfigError) as err:
        typed(RewardModelSettings, group, "reward_model", allowed=("optimizer",))
    msg = str(err.value)
    assert "reward_model.ties_lamda: unknown key; did you mean ties_lambda?" in msg
    assert "reward_model.lora.alhpa: unknown key; did you mean alpha?" in msg
    assert "reward_model.lora.r: got 0, expected a positive integer (the LoRA rank). Fix: pass reward_model.lora.r=" in msg
    assert "reward_model.feedback: got 3, expected a group of settings (a mapping)" in msg
    built = typed(RewardModelSettings, {"lr": 0.1, "lora": {"r": 4}}, "reward_model")
    assert built.lr == 0.1 and built.lora.r == 4 and built.lora.alpha == 16 and built.feedback.ties is True


def test_the_reward_model_stage_reads_typed_settings_and_refuses_unknown_keys():
    from hydra import compose, initialize_config_dir

    from quark_lightning.config.tree import conf_dir
    from quark_lightning.reward_model.rm_settings import RewardModelSettings, validate_reward_model_config

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        ok = compose("train", ["+experiment=rm_online", "reward_model.feedback.max_pairs_per_question=4"])
        typo = compose("train", ["+experiment=rm_orm", "+reward_model.bach_size=8", "reward_model.lora.alpha=0"])
    rm = validate_reward_model_config(ok)
    assert isinstance(rm, RewardModelSettings) and rm.source == "feedback"
    assert rm.feedback.max_pairs_per_question == 4 and rm.steps == ok.trainer.max_steps
    with pytest.raises(ConfigError) as err:
        validate_reward_model_config(typo)
    assert "reward_model.bach_size: unknown key; did you mean batch_size?" in str(err.value)
    assert "reward_model.lora.alpha: got 0, expected a positive number" in str(err.value)


def test_the_data_and_rollout_groups_are_typed_where_the_run_and_the_check_read_them():
    from hydra import compose, initialize_config_dir

    from quark_lightning.config.tree import conf_dir
    from quark_lightning.config.validate import validate_config
    from quark_lightning.data.data_settings import data_settings
    from quark_lightning.rollout.hf_generate import HFGenerateEngine

    overrides = ["+data.prompt_per_step=2", "data.val_fraction=1.5", "+rollout.temprature=0.7", "rollout.top_k=-1"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        bad = compose("train", ["+experiment=smoke", "run_dir=/tmp/quark-typed", *overrides])
        ok = compose("train", ["+experiment=smoke", "data.hub_split=test", "data.split=test"])
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    msg = str(err.value)
    assert "data.prompt_per_step: unknown key; did you mean prompts_per_step?" in msg
    assert "data.val_fraction: got 1.5, expected a number in [0, 1)" in msg
    assert "rollout.top_k: got -1, expected an integer >= 0 (0 or null = off)" in msg
    with pytest.raises(ConfigError, match="rollout.temprature: unknown key; did you mean temperature?"):
        HFGenerateEngine(temprature=0.7)
    kwargs = data_settings(ok.data).module_kwargs()
    assert kwargs["split"] == "test" and kwargs["prompts_per_step"] == ok.data.prompts_per_step
    assert HFGenerateEngine(top_k=None, repetition_penalty=None).sampling["top_k"] == 0


def test_the_shaping_settings_are_checked_by_their_dataclasses_when_reward_shaping_is_built():
    from omegaconf import OmegaConf

    from quark_lightning.config.groups import shaping_problems
    from quark_lightning.shaping.reward_shaping import RewardShaping
    from quark_lightning.shaping.shaping_settings import NormalizationSettings

    dims = dict(names=["a", "b"], weights=[1.0, 1.0], risk=[1.0, 3.0], targets=[None, None])
    with pytest.raises(ConfigError) as err:
        RewardShaping(**dims, aggregator="rfn_tadw", normalization={"clipp": 3}, weighting={"eta": 2})
    assert "optimization.normalization.clipp: unknown key; did you mean clip?" in str(err.value)
    with pytest.raises(ConfigError, match=r"optimization.weighting.eta: got 2, expected a number in \[0, 1\]"):
        RewardShaping(**dims, aggregator="rfn_tadw", normalization={}, weighting={"eta": 2})
    built = RewardShaping(**dims, aggregator="rfn", normalization=NormalizationSettings(mode="per_prompt"))
    assert built.normalizer.mode == "per_prompt" and built.normalizer.clip == 5.0 and built.weighting is None
    # TADW floors each active weight at w_min: 0.3 fits two active dimensions, not four
    opt = OmegaConf.create({"aggregator": "rfn_tadw", "normalization": {}, "weighting": {"w_min": 0.3},
                            "callbacks": {"reward_rescaling": None, "weighting": None}})  # fmt: skip
    assert not [p for p in shaping_problems(opt, active_dimensions=2) if "w_min" in p]
    assert "optimization.weighting.w_min: got 0.3, but 0.3 x 4 active dimensions" in " ".join(
        shaping_problems(opt, active_dimensions=4)
    )


def test_the_model_group_refuses_unknown_keys_of_a_built_in_source_and_accepts_a_custom_sources_own():
    from hydra import compose, initialize_config_dir

    from quark_lightning.config.tree import conf_dir
    from quark_lightning.config.validate import validate_config

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        typo = compose("train", ["+experiment=smoke", "run_dir=/tmp/q", "+model.dtyp=bfloat16", "model.lora.r=0"])
        custom = compose(
            "train",
            ["+experiment=smoke", "run_dir=/tmp/q", "model._target_=tests.config.test_typed_config.MySource", "+model.shard=3"],
        )
    with pytest.raises(ConfigError) as err:
        validate_config(typo)
    assert "model.dtyp: unknown key; did you mean dtype?" in str(err.value)
    assert "model.lora.r: got 0, expected a positive integer (the LoRA rank)" in str(err.value)
    validate_config(custom)  # its own key `shard` is its business


class MySource:
    """A model source of a user's own (config validation only imports it)."""


def test_evaluate_keys_are_typed_and_named_as_written_before_any_model_loads(tmp_path):
    from hydra import compose, initialize_config_dir

    from quark_lightning.config.tree import conf_dir
    from quark_lightning.evaluation.evaluate_models import run_evaluation

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("evaluate", ["limit=0", "greedy=maybe", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        run_evaluation(cfg)
    assert "invalid evaluate settings" in str(err.value)
    assert "limit: got 0, expected a positive number of prompts (or null for all)" in str(err.value)
    assert "greedy: got 'maybe', expected true or false" in str(err.value)
    assert not list(tmp_path.iterdir())  # stopped before writing anything


def test_every_stage_kind_has_its_settings():
    from quark_lightning.stages.kinds import STAGE_KINDS
    from quark_lightning.stages.stage_settings import STAGE_SETTINGS

    assert sorted(STAGE_SETTINGS) == sorted(STAGE_KINDS)
