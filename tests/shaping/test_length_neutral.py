"""Length control (shaping/length_neutral.py): a dimension may not pay for words inside the step's groups.

The slope by hand, the properties the module doc claims (group means kept, no within-group correlation
with length left, affine equivariance, NaN kept), and in RewardShaping: the advantage no longer follows
length under `sum`, the gates still read the raw scores, and a bad setting names the key and the fix.
"""

from __future__ import annotations

import math

import pytest
import torch

from quark_lightning.grpo.step_metrics import length_correlations, pearson, step_diagnostics
from quark_lightning.infra.errors import ConfigError
from quark_lightning.matrix.dimension import Gate
from quark_lightning.shaping.aggregation import centered_within_groups
from quark_lightning.shaping.length_neutral import length_controlled, length_slopes
from quark_lightning.shaping.reward_shaping import RewardShaping

NAN = float("nan")
LENGTHS = torch.tensor([10.0, 20.0, 30.0, 40.0, 5.0, 15.0, 25.0, 35.0])  # 2 groups of 4
SCORES = torch.tensor(
    [[1.0, 0.0], [2.0, 1.0], [3.0, NAN], [5.0, 1.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 0.0]]
)


def test_the_pooled_within_group_slope_by_hand():
    # dim 0, group 1: centred scores (-1.75, -0.75, 0.25, 2.25), lengths (-15, -5, 5, 15): sum c d = 65
    #        group 2: centred scores (-1, 0, 0, 1), lengths (-15, -5, 5, 15): sum c d = 30; sum d^2 = 2 x 500
    # dim 1 applies to 3 of group 1: scores (0, 1, 1) mean 2/3, lengths (10, 20, 40) mean 70/3
    #        sum c d = (-2/3)(-40/3) + (1/3)(-10/3) + (1/3)(50/3) = 120/9, sum d^2 = (1600 + 100 + 2500)/9
    #        group 2 as dim 0's: (-0.25, -0.25, 0.75, -0.25) . (-15, -5, 5, 15) = 5, sum d^2 = 500
    slopes = length_slopes(SCORES, LENGTHS, 4)
    assert slopes.tolist() == pytest.approx([95 / 1000, (120 / 9 + 5) / (4200 / 9 + 500)])
    out = length_controlled(SCORES, LENGTHS, 4, torch.tensor([True, False]))
    assert out[0, 0].item() == pytest.approx(1.0 - 0.095 * -15)  # 2.425
    assert torch.equal(out[:, 1].nan_to_num(-9), SCORES[:, 1].nan_to_num(-9))  # not controlled: as it was


def test_group_means_are_kept_and_no_within_group_length_correlation_is_left():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(5, 72, (32,), generator=g).float()
    scores = torch.stack([0.05 * lengths + torch.randn(32, generator=g), torch.randn(32, generator=g)], 1)
    scores[3, 1] = NAN
    out = length_controlled(scores, lengths, 8, torch.tensor([True, True]))
    torch.testing.assert_close(out.view(4, 8, 2).nanmean(1), scores.view(4, 8, 2).nanmean(1))
    assert math.isnan(out[3, 1]) and not torch.isnan(out).sum() > 1
    before = length_correlations(scores[:, :1], lengths, 8)[0]
    after = length_correlations(out[:, :1], lengths, 8)[0]
    assert before > 0.5 and abs(after) < 1e-5
    # affine equivariance: a r + c -> a r' + c
    scaled = length_controlled(3.0 * scores + 2.0, lengths, 8, torch.tensor([True, True]))
    torch.testing.assert_close(scaled, 3.0 * out + 2.0, equal_nan=True)


def test_without_two_lengths_in_a_group_nothing_changes():
    lengths = torch.tensor([72.0, 72.0, 72.0, 72.0])  # every answer cut at the cap
    scores = torch.tensor([[1.0], [2.0], [0.0], [3.0]])
    assert length_slopes(scores, lengths, 4).tolist() == [0.0]
    assert torch.equal(length_controlled(scores, lengths, 4, torch.tensor([True])), scores)


def _shaping(control, gates=()):
    return RewardShaping(
        names=["rm", "safety"],
        weights=[1.0, 1.0],
        risk=[1.0, 3.0],
        targets=[None, 1.0],
        gates=gates,
        aggregator="sum",
        length_control=control,
    )


def test_under_sum_the_advantage_no_longer_follows_length():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 72, (16,), generator=g).float()
    rm = 0.1 * lengths + 0.3 * torch.randn(16, generator=g)  # a reward model that mostly measures length
    scores = torch.stack([rm, torch.ones(16)], 1)
    failed = torch.zeros(16, 2, dtype=torch.bool)
    ids = [f"p{i // 4}" for i in range(16)]
    plain = _shaping(None).shape(scores, failed, ids, 4, "batch", lengths)
    controlled = _shaping("all").shape(scores, failed, ids, 4, "batch", lengths)
    centred = centered_within_groups(lengths.view(-1, 1), 4)[:, 0]
    assert pearson(plain.advantages, centred) > 0.8
    assert abs(pearson(controlled.advantages, centred)) < 1e-5  # one std for the batch: exactly 0
    per_group = _shaping("all").shape(scores, failed, ids, 4, "group", lengths).advantages
    assert abs(pearson(per_group, centred)) < 0.1  # each group scaled by its own std: near 0 (0.079 here)
    assert controlled.aggregated.inputs is not None and plain.aggregated.inputs is None
    # the step diagnostics read the scores aggregated: the controlled dimension no longer pays for length
    record = dict(prompts=[{}] * 16, weights=torch.ones(2), lengths=lengths, group_size=4)
    raw = step_diagnostics(
        ["rm", "safety"], "sum", scores=scores, normalized=None, advantages=plain.advantages, **record
    )
    ctl = step_diagnostics(
        ["rm", "safety"], "sum", scores=scores, normalized=None, advantages=controlled.advantages,
        inputs=controlled.aggregated.inputs, **record,
    )  # fmt: skip
    assert raw["diagnostics/length_corr/rm"] > 0.8 and abs(ctl["diagnostics/length_corr/rm"]) < 1e-5
    assert ctl["diagnostics/within_group_std/rm"] == raw["diagnostics/within_group_std/rm"]  # raw spread


def test_the_gates_still_read_the_raw_scores():
    # one group: the two longest answers are unsafe (safety 0), so safety falls with length: slope -50/2600
    # per token, and the controlled values of the two safe answers (1 - 0.577, 1 - 0.385) fall below the
    # gate's threshold 1. Read by the gate, every answer would be vetoed and the reward model's ranking
    # (the long, unsafe ones first) would win.
    lengths = torch.tensor([10.0, 20.0, 60.0, 70.0])
    scores = torch.tensor([[0.0, 1.0], [0.1, 1.0], [5.0, 0.0], [6.0, 0.0]])  # rm loves the long ones
    gate = [(1, Gate(below=1.0, mode="cap", value=-1.0))]
    shaped = _shaping("all", gate).shape(
        scores, torch.zeros(4, 2, dtype=torch.bool), ["a"] * 4, 4, "group", lengths
    )
    safety = shaped.aggregated.inputs[:, 1]
    assert safety.tolist() == pytest.approx([1 - 30 / 52, 1 - 20 / 52, 20 / 52, 30 / 52])
    adv = shaped.advantages
    assert float(adv[2:].max()) < float(adv[:2].min())  # the raw scores vetoed them all the same
    assert _shaping("all").needs_global_batch("group") and not _shaping(None).needs_global_batch("group")


def test_a_bad_setting_names_the_key_and_the_fix():
    with pytest.raises(
        ConfigError, match=r"optimization.length_control: \['bogus'\].*Fix: e.g. length_control="
    ):
        _shaping(["bogus"])
    with pytest.raises(ConfigError, match="optimization.length_control"):
        _shaping("rm")  # a single name must be a list
    with pytest.raises(ValueError, match="lengths"):
        _shaping("all").shape(SCORES[:4], torch.zeros(4, 2, dtype=torch.bool), ["a"] * 4, 4, "group", None)


@pytest.mark.parametrize("optimization", ["sum", "gdpo", "rfn", "rfn_tadw"])
def test_every_optimization_group_takes_the_setting_from_the_command_line(optimization):
    from hydra import compose, initialize_config_dir

    from quark_lightning.cli import entry, run

    with initialize_config_dir(config_dir=str(entry.conf_dir()), version_base=None):
        cfg = compose(
            config_name="train",
            overrides=["+experiment=smoke", f"optimization={optimization}", "run_dir=/tmp/unused"],
        )
        matrix = run.build_matrix(cfg.matrix)
        names = matrix.names
        assert cfg.optimization.length_control is None  # off by default
        first_only = [True] + [False] * (len(names) - 1)
        for setting, expected in (("all", [True] * len(names)), ([names[0]], first_only)):
            cfg.optimization.length_control = setting
            assert run.build_shaping(cfg, matrix).length_control.tolist() == expected
