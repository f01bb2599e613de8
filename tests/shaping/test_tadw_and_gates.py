"""TADW on a hand-computed batch, gates that rank, the Bernoulli fallback and the step diagnostics.

Each of these failed before the second-edition fixes (issue 24): a never-applying and a constant dimension
held weight, a vetoed answer outranked a safe one under `sum` and `rfn`, an all-vetoed group learned
nothing under `rfn_tadw` and got a uniform negative advantage under `gdpo`, and a constant dimension's
sigma was 1 raw unit.
"""

from __future__ import annotations

import math

import pytest
import torch

from quark_lightning.grpo.step_metrics import (
    advantage_shares,
    length_correlations,
    pearson,
    redflag_groups_with_safe,
)
from quark_lightning.matrix.dimension import Gate
from quark_lightning.shaping.aggregation import (
    AggregationContext,
    active_weights,
    aggregate_and_advantages,
    apply_gates,
    varies_within_groups,
)
from quark_lightning.shaping.rfn import ReferenceFrozenNormalizer, fallback_sigma, reference_stats
from quark_lightning.shaping.tadw import TriFactorWeighting

NAN = float("nan")


# ------------------------------------------------------------------------------------------- TADW
def test_tadw_weights_on_a_hand_computed_batch():
    # 4 dimensions, 2 groups of 2: a and b vary inside a group, c never applies, d is constant
    z = torch.tensor(
        [
            [1.0, 0.0, NAN, 0.3],
            [-1.0, 2.0, NAN, 0.3],
            [0.5, 0.0, NAN, 0.3],
            [-0.5, 2.0, NAN, 0.3],
        ]
    )
    w = TriFactorWeighting(
        risk=[1.0, 2.0, 3.0, 3.0],
        targets=[1.0, 1.0, None, 1.0],  # raw targets only matter for violations (gamma 0 here)
        weakness_mode="target_gap",
        redundancy=False,
        gamma=0.0,
        eta=1.0,
        w_min=0.01,
    )
    target_z = torch.tensor([2.0, 1.0, NAN, 0.0])
    f = w.update(z, torch.zeros(4, 4), target_z=target_z, group_size=2)
    # EMA (first update) = column means: a 0, b 1, c (no sample) stays 0, d 0.3
    # weakness 1 + max(0, target - EMA): a 3, b 1, c 1 (no target), d 1
    assert f.weakness.tolist() == pytest.approx([3.0, 1.0, 1.0, 1.0])
    # times risk: a 3, b 2 (c and d inactive) -> floor: 0.01 + 0.98 * [3/5, 2/5]
    expected = [0.01 + 0.98 * 3 / 5, 0.01 + 0.98 * 2 / 5, 0.0, 0.0]
    assert w.weights.tolist() == pytest.approx(expected, abs=1e-7)  # float32
    assert float(w.weights[2]) == 0.0 and float(w.weights[3]) == 0.0  # exactly


def test_a_dimension_without_target_is_measured_against_the_reference_answers():
    w = TriFactorWeighting(risk=[1.0, 1.0], weakness_mode="target_gap", redundancy=False, risk_priority=False)
    calib = torch.tensor([[0.0, -1.0], [0.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])  # (M, K), z of the reference
    reference_answers = torch.tensor([[2.0, 0.5], [2.0, 1.5]])  # the expert answers: mean z 2 and 1
    w.initialize(calib, torch.zeros(4, 2), 2, torch.tensor([NAN, NAN]), reference_answers)
    assert w.reference_target.tolist() == [2.0, 1.0]
    # EMA 0 for both; weakness 1 + 2 and 1 + 1 -> weights 3/5, 2/5 (floored with w_min 0.02)
    assert w.weights.tolist() == pytest.approx([0.02 + 0.96 * 0.6, 0.02 + 0.96 * 0.4])
    assert bool(w.initialized) and int(w.steps) == 0


def test_the_step_uses_only_dimensions_that_vary_inside_a_group():
    z = torch.tensor([[1.0, 5.0, NAN], [0.0, 5.0, NAN], [2.0, 1.0, NAN], [2.0, 1.0, NAN]])
    assert varies_within_groups(z, 2).tolist() == [True, False, False]
    w = active_weights(torch.tensor([0.2, 0.5, 0.3]), varies_within_groups(z, 2))
    assert w.tolist() == [1.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------- gates
def _groups(seed: int, n_groups: int = 40, G: int = 4, K: int = 3):
    gen = torch.Generator().manual_seed(seed)
    other = torch.randn(n_groups * G, K - 1, generator=gen) * torch.tensor([1.0, 3.0])  # unlike scales
    safety = (torch.rand(n_groups * G, 1, generator=gen) < 0.5).float()
    safety[:G] = 0.0  # the first group: every answer unsafe
    return torch.cat([safety, other], 1), G


def _normalizer(scores: torch.Tensor) -> ReferenceFrozenNormalizer:
    norm = ReferenceFrozenNormalizer(scores.size(1), fallback_std="bernoulli")
    norm.fit(scores)
    return norm


@pytest.mark.parametrize("aggregator", ["sum", "gdpo", "rfn", "rfn_tadw"])
@pytest.mark.parametrize("mode", ["cap", "set"])
def test_no_vetoed_answer_outranks_a_safe_one_and_all_vetoed_groups_still_learn(aggregator, mode):
    scores, G = _groups(seed=7)
    ctx = AggregationContext(G, normalizer=_normalizer(scores))
    gates = [(0, Gate(below=1.0, mode=mode, value=-1.0))]
    weights = torch.tensor([1.0, 1.0, 1.0]) / (3.0 if aggregator == "rfn_tadw" else 1.0)
    _, adv, _ = aggregate_and_advantages(aggregator, scores, weights, ctx, "group", gates)
    a, safe = adv.view(-1, G), scores[:, 0].view(-1, G) >= 1.0
    mixed = safe.any(1) & ~safe.all(1)
    inversions = sum(
        int(a[g][~safe[g]].max() >= a[g][safe[g]].min()) for g in range(a.size(0)) if bool(mixed[g])
    )
    assert int(mixed.sum()) > 10 and inversions == 0
    all_unsafe = a[0]
    if mode == "cap":  # the other dimensions still rank the answers of an all-unsafe group
        assert all_unsafe.abs().max() > 0.1
        assert all_unsafe.max() - all_unsafe.min() > 0.1  # not a uniform push-down
    if aggregator != "gdpo":
        assert all_unsafe.sum().abs() < 1e-6  # group-centred


def test_cap_in_a_group_shifts_vetoed_answers_below_the_others_keeping_their_order():
    gates = [(0, Gate(below=1.0, mode="cap", value=-1.0))]
    scores = torch.tensor([[1.0], [0.0], [0.0], [1.0], [0.0], [0.0], [0.0], [0.0]])
    reward = torch.tensor([0.5, 3.0, 2.0, -2.0, 2.0, 1.0, 0.0, -5.0])
    grouped, _ = apply_gates(reward, scores, gates, group_size=4)
    # group 1: unvetoed min -2, spread 3 - (-2) = 5 -> bound -7; vetoed [3, 2] shifted by 10
    # group 2: all vetoed -> only the cap: [2, 1, 0, -5] shifted by 3
    assert grouped.tolist() == [0.5, -7.0, -8.0, -2.0, -1.0, -2.0, -3.0, -8.0]
    one_by_one, _ = apply_gates(reward, scores, gates)  # score.py: each answer alone, a plain cap
    assert one_by_one.tolist() == [0.5, -1.0, -1.0, -2.0, -1.0, -1.0, -1.0, -5.0]


# ------------------------------------------------------------------------------------------- RFN
def test_bernoulli_fallback_for_a_constant_dimension():
    assert fallback_sigma("bernoulli", 64) == pytest.approx(math.sqrt(64.5 / 65 * 0.5 / 65))  # 0.0874
    assert fallback_sigma(2.0, 64) == 2.0
    stats = reference_stats(torch.zeros(64, 1), fallback_std="bernoulli")
    assert stats.status == ["constant"] and float(stats.std[0]) == pytest.approx(0.08740, abs=1e-4)
    with pytest.raises(ValueError, match="fallback_std"):
        ReferenceFrozenNormalizer(1, fallback_std="gaussian")


# ------------------------------------------------------------------------------------------- diagnostics
def test_advantage_shares_and_length_correlation_by_hand():
    # 1 group of 2: dimension 0 contributes +-1, dimension 1 +-2, dimension 2 is constant
    contrib = torch.tensor([[1.0, 2.0, 5.0], [-1.0, -2.0, 5.0]])
    assert advantage_shares(contrib, 2).tolist() == pytest.approx([0.2, 0.8, 0.0])
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert math.isnan(pearson(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])))


def test_each_dimensions_length_correlation_is_within_groups_by_hand():
    # 2 groups of 2. Group lengths (10, 30) and (100, 60): centred -10, +10, +20, -20.
    lengths = torch.tensor([10.0, 30.0, 100.0, 60.0])
    contrib = torch.tensor(
        [
            [0.0, 1.0, 7.0],  # dim 0 rises with length in both groups (centred -1, +1, +2, -2): +1
            [2.0, 0.0, 7.0],  # dim 1 falls with it (+0.5, -0.5, -1, +1): -1
            [9.0, -1.0, 7.0],  # dim 2 is constant: NaN
            [5.0, 1.0, 7.0],
        ]
    )
    corr = length_correlations(contrib, lengths, 2)
    assert corr[:2] == pytest.approx([1.0, -1.0]) and math.isnan(corr[2])
    mixed = torch.tensor([[0.0], [1.0], [10.0], [10.0]])  # rises in group 1, constant in group 2
    # centred (-0.5, 0.5, 0, 0) against (-10, 10, 20, -20): 10 / (sqrt(0.5) * sqrt(1000)) = 0.4472
    assert length_correlations(mixed, lengths, 2) == pytest.approx([10 / (0.5**0.5 * 1000**0.5)])


def test_share_of_red_flag_groups_with_a_safe_answer():
    prompts = [{"red_flags": ["x"]}] * 2 + [{"red_flags": []}] * 2 + [{"red_flags": ["y"]}] * 2
    triage = torch.tensor([0.0, 1.0, NAN, NAN, 0.0, 0.0])
    assert redflag_groups_with_safe(prompts, triage, 2) == 0.5


def test_length_decoupled_rfn_removes_a_within_prompt_length_slope():
    # two prompts; the score rises 0.1 per token inside each (prompt offsets 0 and 5) plus quality q
    lengths = torch.tensor([10.0, 20.0, 30.0, 40.0, 10.0, 20.0, 30.0, 40.0])
    quality = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0])
    rm = 0.1 * lengths + torch.tensor([0.0] * 4 + [5.0] * 4) + 0.0 * quality
    scores = torch.stack([rm + quality, quality], 1)  # (8, 2): a length-loving RM and a rule
    ids = ["a"] * 4 + ["b"] * 4
    norm = ReferenceFrozenNormalizer(2, min_count=2, length_decoupled=[True, False])
    norm.fit(scores, ids, lengths)
    # the slope of (0.1 l + q) on l within prompt: 0.1 + cov(q, l) / var(l) = 0.1 + (-0.02, +0.02) -> 0.1
    assert float(norm.length_slope[0]) == pytest.approx(0.1, abs=1e-6) and float(norm.length_slope[1]) == 0.0
    short, long_ = torch.tensor([[3.0, 1.0]]), torch.tensor([[3.0 + 0.1 * 30, 1.0]])  # same answer + 30 tokens
    z_short = norm(short, ["a"], torch.tensor([10.0]))
    z_long = norm(long_, ["a"], torch.tensor([40.0]))
    torch.testing.assert_close(z_short, z_long)  # the padding bought nothing
    plain = ReferenceFrozenNormalizer(2, min_count=2)
    plain.fit(scores, ids)
    gain = float(plain(long_, ["a"])[0, 0] - plain(short, ["a"])[0, 0])
    assert gain == pytest.approx(3.0 / float(plain.std[0]), rel=1e-5) and gain > 0.9  # without: ~1 z for length
    with pytest.raises(ValueError, match="lengths"):
        ReferenceFrozenNormalizer(2, length_decoupled=[True, False]).fit(scores, ids)
