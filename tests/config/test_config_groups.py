"""Every group a run uses is validated before anything heavy: a bad value exits 2 naming the key, and no
data, model or reward model has been loaded by then."""

import pytest
from hydra import compose, initialize_config_dir

from quark_lightning.cli import entry, run
from quark_lightning.cli.entry import run_or_exit
from quark_lightning.config.groups import group_problems

EXPERIMENTS = sorted(p.stem for p in (entry.conf_dir() / "experiment").glob("*.yaml"))


def _compose(*overrides: str, tmp_path=None):
    with initialize_config_dir(config_dir=str(entry.conf_dir()), version_base=None):
        return compose(
            config_name="train",
            overrides=["+experiment=smoke", f"run_dir={tmp_path or '/tmp/unused'}", *overrides],
        )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_is_valid_as_shipped(experiment):
    with initialize_config_dir(config_dir=str(entry.conf_dir()), version_base=None):
        cfg = compose(config_name="train", overrides=[f"+experiment={experiment}", "run_dir=/tmp/unused"])
    assert group_problems(cfg) == []


BAD = [
    # (override, the key the message must name, a phrase of the fix)
    ("optimization.normalization.mode=bogus", "optimization.normalization.mode", "global"),
    ("+optimization.normalization.clipp=3", "optimization.normalization.clipp", "did you mean clip"),
    (
        "optimization.normalization.calibration_prompts=0",
        "optimization.normalization.calibration_prompts",
        ">= 1",
    ),
    ("optimization.weighting.w_min=0.9", "optimization.weighting.w_min", "(0, 1)"),
    ("optimization.weighting.weakness_mode=fast", "optimization.weighting.weakness_mode", "target_gap"),
    ("+optimization.weighting.tau2=1", "optimization.weighting.tau2", "did you mean tau"),
    ("optimization.weighting=null", "optimization.weighting", "optimization=rfn_tadw"),
    ("optimization.length_control=5", "optimization.length_control", "expected null, all, or a list"),
    ("callbacks.closed_loop.pass_target=2", "callbacks.closed_loop.pass_target", "[0, 1]"),
    ("callbacks.closed_loop.gain_decay=1.5", "callbacks.closed_loop.gain_decay", "[0, 1)"),
    ("callbacks.closed_loop.pattern_expiry=0", "callbacks.closed_loop.pattern_expiry", ">= 1"),
    (
        "+callbacks.closed_loop.probe_promts=3",
        "callbacks.closed_loop.probe_promts",
        "did you mean probe_prompts",
    ),
    ("+rollout.max_new_token=3", "rollout.max_new_token", "did you mean max_new_tokens"),
    ("+algorithm.lr_schedulr=1", "algorithm.lr_schedulr", "did you mean lr_scheduler"),
    ("+matrix.dimensions.safety.wieght=2", "matrix.dimensions.safety.wieght", "did you mean weight"),
    ("+matrix.dimensions.safety.scorer.bogus=1", "matrix.dimensions.safety.scorer.bogus", "remove it"),
]


@pytest.mark.parametrize("override,key,fix", BAD, ids=[b[1] for b in BAD])
def test_a_bad_value_exits_2_naming_the_key_before_anything_is_loaded(
    override, key, fix, monkeypatch, capsys, tmp_path
):
    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was validated")

    monkeypatch.setattr(run, "load_model", loaded)
    monkeypatch.setattr(run, "build_matrix", loaded)
    monkeypatch.setattr(run.PromptDataModule, "load", loaded)
    cfg = _compose("optimization=rfn_tadw", override, tmp_path=tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_or_exit(run.run, cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert key in err and fix in err, err
    assert "Traceback" not in err


def test_every_problem_is_reported_at_once():
    cfg = _compose("optimization=rfn_tadw", "callbacks.closed_loop.pass_target=2", "+rollout.top_pp=1")
    problems = group_problems(cfg)
    assert any("callbacks.closed_loop.pass_target" in p for p in problems)
    assert any("rollout.top_pp" in p for p in problems)
