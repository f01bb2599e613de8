"""Every experiment composes and validates; wrong values name the key, the expectation and the fix."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from quark_lightning.config.validate import validate_config
from quark_lightning.infra.errors import ConfigError
from quark_lightning.matrix.build import build_matrix
from quark_lightning.matrix.dimension import MatrixConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    OmegaConf.update(cfg, "run_dir", "/tmp/quark-test-run", force_add=True)
    return cfg


def without_trained_reward_models(cfg):
    """Drop dimensions whose scorer would train a reward model on first use (tested in test_reward_model)."""
    for name, dim in list(cfg.matrix.dimensions.items()):
        if dim is not None and OmegaConf.select(dim, "scorer.train_experiment"):
            cfg.matrix.dimensions[name] = None
    return cfg


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg = compose_cfg(f"+experiment={name}")
    if cfg.get("stage", "grpo") == "grpo":
        validate_config(cfg)
    matrix_cfg = without_trained_reward_models(cfg).matrix
    declared = {str(n): d for n, d in matrix_cfg.dimensions.items() if d is not None}
    matrix = build_matrix(matrix_cfg)
    # the matrix is the one the config declares: every non-null dimension, in order, with its weight
    assert declared and matrix.names == list(declared)
    assert matrix.weights().tolist() == pytest.approx(
        [float(d.get("weight", 1.0)) for d in declared.values()]
    )


def test_an_experiment_overrides_the_defaults_globally():
    """`+experiment=smoke` lands its values at the top level (`# @package _global_`), over train.yaml's
    defaults, and swaps a config group (`override /warmstart: sft`, then sets its steps)."""
    assert {"demo", "smoke"} <= set(EXPERIMENTS)  # the parametrized test above is not empty
    base, smoke = compose_cfg(), compose_cfg("+experiment=smoke")
    # conf/trainer/cpu.yaml, conf/rollout/hf.yaml, conf/warmstart/none.yaml
    assert (base.trainer.max_steps, base.rollout.max_new_tokens, base.warmstart.enabled) == (20, 128, False)
    # conf/experiment/smoke.yaml; warmstart.batch_size 4 over sft.yaml's 8, its lr (3e-3) kept
    assert (smoke.trainer.max_steps, smoke.rollout.max_new_tokens, smoke.data.prompts_per_step) == (3, 24, 2)
    assert (smoke.warmstart.enabled, smoke.warmstart.steps, smoke.warmstart.batch_size) == (True, 5, 4)
    assert smoke.warmstart.lr == pytest.approx(3e-3)
    assert "experiment" not in smoke


def test_demo_matrix_spans_all_four_categories():
    cfg = compose_cfg("+experiment=demo")
    declared = {d.category for d in cfg.matrix.dimensions.values() if d is not None}
    assert declared == {"fundamental", "expert", "online", "format"}
    matrix = build_matrix(without_trained_reward_models(cfg).matrix)
    assert len(matrix.names) >= 9
    assert {matrix.names[k] for k, _ in matrix.gates()} == {"safety", "triage"}  # the two vetoes


@pytest.mark.parametrize(
    "override,fragment",
    [
        (
            "algorithm.loss_type=ppo",
            "algorithm.loss_type: got 'ppo', expected one of ['dapo', 'dr_grpo', 'grpo']",
        ),
        ("algorithm.num_generations=1", "algorithm.num_generations: got 1, expected an integer >= 2"),
        ("algorithm.beta=-0.1", "algorithm.beta: got -0.1, expected a number >= 0"),
        ("algorithm.scale_rewards=sometimes", "algorithm.scale_rewards: got 'sometimes'"),
        ("rollout.top_p=1.5", "rollout.top_p: got 1.5"),
        ("optimization.aggregator=magic", "optimization.aggregator: got 'magic'"),
        ("matrix.dimensions.safety.category=vibes", "matrix.dimensions.safety.category: got 'vibes'"),
        ("model.dtype=float8", "model.dtype: got 'float8'"),
    ],
)
def test_bad_values_name_key_expectation_and_fix(override, fragment):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg("+experiment=demo", override))
    assert fragment in str(err.value)
    assert "Fix:" in str(err.value)


def test_hf_model_without_path_is_reported():
    with pytest.raises(ConfigError, match=r"model.name_or_path: required but not set"):
        validate_config(compose_cfg("+experiment=demo", "model=hf"))


def test_scorer_that_cannot_be_built_names_the_dimension():
    cfg = compose_cfg("+experiment=demo", "matrix.dimensions.format_rules.scorer.min_words=-3")
    with pytest.raises(
        MatrixConfigError, match=r"matrix dimension 'format_rules': scorer .* could not be built"
    ):
        build_matrix(cfg.matrix)
    cfg = compose_cfg(
        "+experiment=demo", "matrix.dimensions.safety.scorer._target_=quark_lightning.scorers.nope.Scorer"
    )
    with pytest.raises(MatrixConfigError, match="matrix dimension 'safety'"):
        build_matrix(cfg.matrix)


def test_the_removed_safety_urgent_patterns_says_where_triage_went():
    cfg = compose_cfg("+experiment=demo", "+matrix.dimensions.safety.scorer.urgent_patterns=[now]")
    with pytest.raises(
        MatrixConfigError, match="urgent_patterns was removed: red-flag triage is now the `triage`"
    ):
        build_matrix(without_trained_reward_models(cfg).matrix)


def test_a_dimension_can_be_dropped_from_the_command_line():
    cfg = compose_cfg("+experiment=demo", "matrix.dimensions.safety=null")
    validate_config(cfg)
    demo = without_trained_reward_models(compose_cfg("+experiment=demo")).matrix.dimensions
    kept = [str(n) for n, d in demo.items() if d is not None and n != "safety"]
    assert demo.get("safety") is not None and len(kept) >= 2  # there was something to drop, and to keep
    matrix = build_matrix(without_trained_reward_models(cfg).matrix)
    assert matrix.names == kept
    assert {matrix.names[k] for k, _ in matrix.gates()} == {"triage"}  # safety's veto went with it
