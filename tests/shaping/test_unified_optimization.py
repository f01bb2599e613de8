"""Reference-Frozen Normalization, Tri-Factor Adaptive Dynamic Weighting and the aggregators."""

import json
import math
import subprocess
import sys

import pytest
import torch

from quark_lightning.shaping.aggregation import AggregationContext, aggregate_and_advantages
from quark_lightning.shaping.rfn import ReferenceFrozenNormalizer, reference_stats
from quark_lightning.shaping.tadw import (
    TriFactorWeighting,
    correlation,
    floor_weights,
    redundancy_factor,
    weakness_factor,
)
from tests.conftest import REPO

NAN = float("nan")


def heterogeneous_reference(m=400, seed=0):
    """Reference scores on very different scales: a BT logit, a [0, 1] rubric, a {-1, 0} penalty, a binary rule."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [
            3.0 * torch.randn(m, generator=g) + 1.5,
            torch.rand(m, generator=g),
            -(torch.rand(m, generator=g) < 0.3).float(),
            (torch.rand(m, generator=g) < 0.6).float(),
        ],
        dim=1,
    )  # (M, 4)


# ---------------------------------------------------------------- RFN
def test_reference_rewards_have_mean_zero_std_one_after_rfn():
    ref = heterogeneous_reference()
    norm = ReferenceFrozenNormalizer(4, clip=None)
    norm.fit(ref)
    z = norm(ref)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(4), atol=1e-5, rtol=0)
    assert norm.status == ["ok"] * 4


def test_affine_transform_of_a_raw_reward_changes_nothing():
    """Each normalizer's output and the `rfn` advantages equal a direct computation from the reference's
    mean and (unbiased) std, (x - mean) / std clipped at 5, then the weighted sum and each group of 8
    centred and divided by its std (+ 1e-4); so both equal it whether dimension 1 is in raw units or
    in 1000 * raw + 5. `rfn_tadw` then sees identical normalized scores and gives identical advantages."""
    ref, policy = heterogeneous_reference(seed=0), heterogeneous_reference(m=32, seed=1)
    scaled_ref, scaled_policy = ref.clone(), policy.clone()
    scaled_ref[:, 1] = 1000 * ref[:, 1] + 5
    scaled_policy[:, 1] = 1000 * policy[:, 1] + 5
    a, b = ReferenceFrozenNormalizer(4), ReferenceFrozenNormalizer(4)
    a.fit(ref)
    b.fit(scaled_ref)
    z = ((policy.double() - ref.double().mean(0)) / ref.double().std(0)).clamp(-5.0, 5.0)  # (32, 4)
    torch.testing.assert_close(a(policy).double(), z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b(scaled_policy).double(), z, atol=1e-4, rtol=1e-4)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    reward = (z * weights.double()).sum(1).view(4, 8)  # 4 groups of 8
    expected = ((reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-4)).view(-1)
    for norm, raw in ((a, policy), (b, scaled_policy)):
        _, adv, _ = aggregate_and_advantages("rfn", raw, weights, AggregationContext(8, normalizer=norm))
        torch.testing.assert_close(adv.double(), expected, atol=1e-4, rtol=1e-4)
    _, adv_a, _ = aggregate_and_advantages("rfn_tadw", policy, weights, AggregationContext(8, normalizer=a))
    _, adv_b, _ = aggregate_and_advantages(
        "rfn_tadw", scaled_policy, weights, AggregationContext(8, normalizer=b)
    )
    torch.testing.assert_close(adv_a, adv_b, atol=1e-4, rtol=1e-4)


def test_statistics_are_frozen_and_clipped():
    norm = ReferenceFrozenNormalizer(1, clip=5.0)
    norm.fit(torch.tensor([[0.0], [1.0], [2.0]]))  # mean 1, unbiased std 1
    assert norm(torch.tensor([[100.0], [-100.0], [3.0]])).squeeze(1).tolist() == pytest.approx(
        [5.0, -5.0, 2.0]
    )
    norm(torch.tensor([[50.0]]))  # applying never moves the statistics
    assert float(norm.mean) == 1.0 and float(norm.std) == 1.0


def test_constant_nan_and_sparse_dimensions_are_handled_and_reported():
    scores = torch.tensor(
        [
            [1.0, NAN, NAN, 0.5],
            [1.0, NAN, 2.0, 0.7],
            [1.0, NAN, NAN, 0.1],
            [1.0, NAN, NAN, 0.9],
        ]
    )
    stats = reference_stats(scores, min_count=3)
    assert stats.status == ["constant", "never_applies", "sparse", "ok"]
    assert stats.std.tolist()[:3] == [1.0, 1.0, 1.0]  # fallbacks, no division by ~0
    norm = ReferenceFrozenNormalizer(4, min_count=3)
    norm.fit(scores)
    z = norm(torch.tensor([[0.0, 3.0, NAN, 0.55]]))
    assert z[0, 0] == pytest.approx(-1.0)  # constant: departure in raw units
    assert z[0, 1] == pytest.approx(3.0)  # never applied in calibration: raw value (clipped)
    assert math.isnan(z[0, 2])  # NaN stays NaN
    assert torch.isfinite(norm.mean).all() and torch.isfinite(norm.std).all()


def test_per_prompt_anchors():
    norm = ReferenceFrozenNormalizer(1, mode="per_prompt", clip=None)
    scores = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
    norm.fit(scores, ["a", "a", "b", "b"])
    z = norm(torch.tensor([[1.0], [11.0], [6.0]]), ["a", "b", "unseen"])
    std = float(scores.std())
    assert z.squeeze(1).tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-5)  # unseen -> global mean 6
    assert float(norm.std) == pytest.approx(std)


def test_uncalibrated_normalizer_refuses():
    with pytest.raises(RuntimeError, match="not calibrated"):
        ReferenceFrozenNormalizer(2)(torch.zeros(1, 2))


# ---------------------------------------------------------------- TADW
def test_weakness_factor_hand_computed():
    f = weakness_factor(torch.tensor([0.0, math.log(2.0)]), tau=1.0, mode="softmax", target_z=None)
    # softmax(-s) = [2/3, 1/3], times K = 2
    assert f.tolist() == pytest.approx([4 / 3, 2 / 3])
    gap = weakness_factor(torch.tensor([0.0, 2.0]), 1.0, "target_gap", torch.tensor([1.0, 1.0]))
    assert gap.tolist() == [2.0, 1.0]


def test_one_tadw_update_hand_computed():
    w = TriFactorWeighting(
        risk=[1.0, 1.0], weakness=True, risk_priority=False, redundancy=False, eta=0.5, w_min=1e-9
    )
    # column means 0 and log 2; both columns vary (a constant one would get weight 0)
    z = torch.tensor([[-1.0, math.log(2.0) - 1.0], [1.0, math.log(2.0) + 1.0]])
    w.update(z, raw=torch.zeros(2, 2))
    # initial weights [1/2, 1/2]; new = [2/3, 1/3]; smoothed with eta 0.5 -> [7/12, 5/12]
    assert w.weights.tolist() == pytest.approx([7 / 12, 5 / 12], abs=1e-6)


def test_lagging_dimension_gains_weight_over_steps():
    w = TriFactorWeighting(risk=[1.0, 1.0, 1.0])
    history = [float(w.weights[0])]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        z = torch.randn(32, 3, generator=g) * 0.1
        z[:, 0] -= 1.0  # dimension 0 lags the reference; the others are ahead
        z[:, 1:] += 1.0
        w.update(z, raw=torch.zeros(32, 3))
        history.append(float(w.weights[0]))
    assert all(b > a for a, b in zip(history, history[1:]))
    assert history[-1] > 0.5 > history[0]


def test_exact_duplicate_is_discounted():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4096, 2, generator=g)  # two (nearly) uncorrelated dimensions
    z = torch.cat([base, base[:, 1:]], dim=1)  # dimension 2 duplicates dimension 1
    corr = correlation(z)
    assert corr[1, 2] == pytest.approx(1.0)
    f = redundancy_factor(corr)
    assert f[1] < f[0] and f[2] < f[0]
    w = TriFactorWeighting(risk=[1.0, 1.0, 1.0], weakness=False, risk_priority=False)
    for _ in range(60):
        w.update(z, raw=torch.zeros(4096, 3))
    assert w.weights[1] < w.weights[0] and w.weights[2] < w.weights[0]
    # the duplicated pair together weighs about what one independent dimension does
    assert float(w.weights[1] + w.weights[2]) == pytest.approx(float(w.weights[0]), rel=0.1)


def test_violations_raise_only_high_risk_dimensions():
    w = TriFactorWeighting(risk=[3.0, 1.0], targets=[1.0, 1.0], weakness=False, redundancy=False)
    raw = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # both dims violate on some samples
    f = w.factors(torch.zeros(2, 2), raw, None)
    assert f.violation.tolist() == [0.5, 1.0]
    assert f.risk.tolist() == [3.0 * 1.5, 1.0]  # only the high-risk dimension is raised


def test_weights_never_reach_zero():
    w = TriFactorWeighting(risk=[10.0, 1.0, 1.0, 1.0], w_min=0.02)
    for _ in range(200):
        z = torch.tensor([[-5.0, 5.0, 5.0, 5.0]]).repeat(8, 1)
        w.update(z, raw=torch.zeros(8, 4))
    assert float(w.weights.min()) >= 0.02 - 1e-7
    assert float(w.weights.sum()) == pytest.approx(1.0)
    assert floor_weights(torch.tensor([1.0, 0.0]), 0.1).tolist() == pytest.approx([0.9, 0.1])


# ---------------------------------------------------------------- aggregators (TRL semantics)
def test_sum_and_gdpo_hand_computed():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # 2 prompts x G=2
    weights = torch.tensor([1.0, 1.0])
    agg, adv, _ = aggregate_and_advantages("sum", scores, weights, AggregationContext(2))
    assert agg.reward.tolist() == [1.0, 1.0, 2.0, 0.0]
    assert adv[:2].tolist() == [0.0, 0.0]  # GRPO's "advantage collapse": (1,0) vs (0,1)
    agg, adv, _ = aggregate_and_advantages("gdpo", scores, weights, AggregationContext(2))
    # per-dim group advantages: +-0.5 / (unbiased std sqrt(.5) + 1e-4) = +-a; summed over dims the rows are
    # [a - a, -a + a, 2a, -2a] = [0, 0, 2a, -2a]
    # then batch-normalized: mean 0, unbiased std of [0, 0, 2a, -2a] = sqrt(8a^2/3)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    expected = torch.tensor([0.0, 0.0, 2 * a, -2 * a]) / (math.sqrt(8 * a * a / 3) + 1e-4)
    torch.testing.assert_close(adv, expected)
    assert agg.reward.tolist() == [1.0, 1.0, 2.0, 0.0]  # logged reward: weighted raw sum, as in TRL


# ---------------------------------------------------------------- across ranks and resumes
def run_rank_state(out_dir, strategy, devices, model_dir, ckpt="-", max_steps=2):
    cmd = [
        sys.executable,
        "tests/scripts/rank_state.py",
        str(out_dir),
        strategy,
        str(devices),
        model_dir,
        str(ckpt),
        str(max_steps),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(int(devices))]


@pytest.mark.slow
def test_statistics_and_weights_identical_across_two_ddp_processes(tmp_path, tiny_model_dir):
    rank0, rank1 = run_rank_state(tmp_path, "ddp", 2, tiny_model_dir)
    assert rank0 == rank1  # bit-identical statistics, weights and EMA state on both ranks
    # TADW acted: two updates moved its score EMA (here only format varies inside a group, so the
    # weights stay [1, 0, 0]: a dimension that cannot move an advantage gets none)
    assert rank0["end"]["tadw_steps"] == 2 and rank0["end"]["ema_score"] != rank0["start"]["ema_score"]


@pytest.mark.slow
def test_statistics_and_weights_survive_a_resume_exactly(tmp_path, tiny_model_dir):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    (first,) = run_rank_state(first_dir, "auto", 1, tiny_model_dir, max_steps=2)
    (second,) = run_rank_state(
        second_dir, "auto", 1, tiny_model_dir, ckpt=first_dir / "last.ckpt", max_steps=3
    )
    assert second["start"] == first["end"]  # restored exactly, not recalibrated
    assert second["end"]["tadw_steps"] == 3 and second["end"]["rfn_mean"] == first["end"]["rfn_mean"]


def test_gates_cap_or_set_the_reward_of_vetoed_completions():
    from quark_lightning.matrix.dimension import Gate
    from quark_lightning.shaping.aggregation import apply_gates

    scores = torch.tensor([[1.0, 0.9], [0.0, 0.9], [NAN, 0.1], [0.0, 0.1]])  # col 0 = safety
    reward = torch.tensor([2.0, 2.0, 0.5, -3.0])
    capped, vetoed = apply_gates(reward, scores, [(0, Gate(below=1.0, mode="cap", value=-1.0))])
    assert capped.tolist() == [2.0, -1.0, 0.5, -3.0]  # NaN (not applicable) never vetoes
    assert vetoed[:, 0].tolist() == [False, True, False, True]
    set_, _ = apply_gates(reward, scores, [(0, Gate(below=1.0, mode="set", value=0.0))])
    assert set_.tolist() == [2.0, 0.0, 0.5, 0.0]
    weights = torch.tensor([1.0, 1.0])
    ctx = AggregationContext(2)
    _, adv, _ = aggregate_and_advantages(
        "gdpo", scores[:, :1].nan_to_num(1.0).repeat(1, 2), weights, ctx, gates=[(0, Gate(below=1.0))]
    )
    assert adv[1] == adv[:2].min() and adv[3] == adv[2:].min()


def test_static_weights_are_tadw_priors_and_zero_switches_a_dimension_off():
    # identical dimensions but for their static weight: TADW keeps their ratio, and 0 stays 0
    w = TriFactorWeighting(
        risk=[1.0, 1.0, 1.0],
        prior=[2.0, 1.0, 0.0],
        weakness=False,
        redundancy=False,
        w_min=0.0 + 1e-3,
        eta=1.0,
    )
    assert w.weights[2] == 0.0 and torch.isclose(w.weights.sum(), torch.tensor(1.0))
    z = torch.randn(16, 3)
    for _ in range(3):
        w.update(z, z)
        assert w.weights[2] == 0.0 and torch.isclose(w.weights.sum(), torch.tensor(1.0))
    floor = 1e-3
    share = (w.weights[:2] - floor) / (1 - 2 * floor)  # the floor is spread over the two active dimensions
    assert float(share[0] / share[1]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="static weights"):
        TriFactorWeighting(risk=[1.0, 1.0], prior=[0.0, 0.0])


def test_a_switched_off_duplicate_does_not_halve_its_twin():
    # dimension 1 duplicates dimension 0 (correlation 1) but has weight 0: it must weigh as if it were
    # dropped, so dimensions 0 and 2 (independent) end with equal weights
    torch.manual_seed(0)
    a, c = torch.randn(64), torch.randn(64)
    z = torch.stack([a, a, c], dim=1)
    w = TriFactorWeighting(risk=[1.0, 1.0, 1.0], prior=[1.0, 0.0, 1.0], weakness=False, eta=1.0)
    dropped = TriFactorWeighting(risk=[1.0, 1.0], weakness=False, eta=1.0)
    w.update(z, z)
    dropped.update(z[:, [0, 2]], z[:, [0, 2]])
    assert w.weights[1] == 0.0
    assert torch.allclose(w.weights[[0, 2]], dropped.weights, atol=1e-6)
