"""RewardShaping is the one owner of the shaping state: the step applies it, callbacks drive it, and a
combination that cannot work is refused with the fix (never silently downgraded)."""

import lightning as L
import pytest
import torch

from quark_lightning.infra.errors import ConfigError
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.safety import DangerousAdviceScorer
from quark_lightning.shaping.reward_shaping import RewardShaping


def matrix():
    return AlignmentMatrix(
        [
            Dimension("format_rules", "format", FormatScorer(), weight=2.0, target=0.9),
            Dimension("safety", "fundamental", DangerousAdviceScorer(), risk=3.0, target=1.0),
        ]
    )


def test_static_weights_times_the_loop_gain_are_the_weights_the_step_uses():
    shaping = RewardShaping.with_defaults(matrix(), "sum")
    assert shaping.weights.tolist() == [2.0, 1.0]
    shaping.set_loop_gain(torch.tensor([1.5, 1.0]))
    assert shaping.weights.tolist() == [3.0, 1.0]
    scores = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # one group of two
    shaped = shaping.shape(scores, torch.zeros(2, 2, dtype=torch.bool), ["a", "a"], group_size=2)
    assert shaped.aggregated.reward.tolist() == [4.0, 1.0]  # 3 x 1 + 1 x 1, 3 x 0 + 1 x 1


def test_each_quantity_is_one_buffer_in_the_state_dict():
    keys = set(RewardShaping.with_defaults(matrix(), "rfn_tadw").state_dict())
    assert "loop_gain" in keys and "weighting.weights" in keys and "normalizer.mean" in keys
    assert not any("loop_gain" in k for k in keys - {"loop_gain"})  # the gain is not also a TADW buffer
    assert "base_weights" not in keys  # the static weights come from the config, not the checkpoint


@pytest.mark.parametrize(
    "aggregator,normalization,weighting,fix",
    [
        ("rfn", None, None, "optimization=rfn"),
        ("rfn_tadw", {}, None, "optimization=rfn_tadw"),
        ("softmax", None, None, "optimization=rfn_tadw"),
    ],
)
def test_a_combination_that_cannot_work_is_refused_with_the_fix(aggregator, normalization, weighting, fix):
    with pytest.raises(ConfigError, match=fix):
        RewardShaping.from_matrix(matrix(), aggregator, normalization, weighting)


def test_rfn_tadw_without_its_weighting_callback_is_refused_not_run_as_rfn(tiny_model_dir):
    from callbacks.reward_rescaling import ReferenceFrozenNormalization
    from quark_lightning.data.datamodule import PromptDataModule
    from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
    from quark_lightning.models.loading import load_causal_lm
    from quark_lightning.rollout.hf_generate import HFGenerateEngine

    loaded = load_causal_lm(tiny_model_dir)
    module = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        matrix(),
        GRPOConfig(num_generations=2),
        HFGenerateEngine(max_new_tokens=4),
        shaping=RewardShaping.with_defaults(matrix(), "rfn_tadw", normalization={"min_count": 1}),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[ReferenceFrozenNormalization(calibration_prompts=2)],  # no weighting callback
    )
    with pytest.raises(ConfigError, match="needs the weighting callback"):
        trainer.fit(module, datamodule=PromptDataModule(prompts_per_step=2, val_fraction=0.0))


def test_target_z_uses_the_normalizer_clip_and_per_prompt_anchors():
    shaping = RewardShaping.from_matrix(matrix(), "rfn_tadw", {"mode": "per_prompt", "clip": 2.0}, {})
    scores = torch.tensor([[0.5, 1.0], [0.7, 1.0], [0.1, 0.0], [0.3, 0.0]])
    shaping.calibrate(scores, ["a", "a", "b", "b"])
    # format: mean 0.4, std 0.2582; anchors a 0.6, b 0.2 -> targets 0.9: (0.3 / 0.258, 0.7 / 0.258 -> clip 2)
    std = float(shaping.normalizer.std[0])
    expected = (0.3 / (std + 1e-6) + 2.0) / 2
    assert float(shaping.target_z(["a", "b"])[0]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("aggregator", ["sum", "gdpo", "rfn", "rfn_tadw"])
def test_a_resume_after_changing_a_matrix_weight_uses_the_new_weight(aggregator):
    """Config-derived values are not checkpoint state: the static weights (and TADW's risk levels and
    targets) come from today's config when a checkpoint is loaded; what the run learned is kept."""
    before = RewardShaping.with_defaults(matrix(), aggregator)  # format_rules weight 2, safety 1
    before.set_loop_gain(torch.tensor([1.5, 1.0]))  # closed-loop state: kept across the resume
    if before.weighting is not None:
        before.weighting.weights.copy_(torch.tensor([0.6, 0.4]))  # adapted by TADW during the run
    changed = AlignmentMatrix(
        [
            Dimension("format_rules", "format", FormatScorer(), weight=4.0, target=0.5),
            Dimension("safety", "fundamental", DangerousAdviceScorer(), risk=5.0, target=1.0),
        ]
    )
    after = RewardShaping.with_defaults(changed, aggregator)
    after.load_state_dict(before.state_dict())
    assert after.loop_gain.tolist() == [1.5, 1.0]
    if aggregator != "rfn_tadw":
        assert after.weights.tolist() == [6.0, 1.0]  # new static weight 4 x the run's gain 1.5
        return
    w_min = after.weighting.w_min
    # 0.6 x 4/2 = 1.2 and 0.4 x 1/1 = 0.4 -> shares 3/4, 1/4 -> floored: w_min + (1 - 2 w_min) x share
    expected = [w_min + (1 - 2 * w_min) * 0.75, w_min + (1 - 2 * w_min) * 0.25]
    assert after.weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert after.weighting.prior.tolist() == [4.0, 1.0]
    assert after.weighting.risk.tolist() == [1.0, 5.0] and after.weighting.targets.tolist() == [0.5, 1.0]
    same = RewardShaping.with_defaults(matrix(), aggregator)  # an unchanged config: the weights as saved
    same.load_state_dict(before.state_dict())
    assert same.weights.tolist() == pytest.approx([0.6, 0.4])
