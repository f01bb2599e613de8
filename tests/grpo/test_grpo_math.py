"""GRPO advantages, aggregation and loss against hand-computed numbers."""

import math

import pytest
import torch

from quark_lightning.grpo.logprobs import selective_log_softmax
from quark_lightning.grpo.loss import chunk_weight, grpo_policy_loss, k3_kl
from quark_lightning.shaping.aggregation import group_advantages, nanstd, weighted_sum

NAN = float("nan")


def test_group_advantages_hand_computed():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), group_size=4).advantages
    std = math.sqrt(5.0 / 3.0)  # unbiased: ((1.5^2 + 0.5^2) * 2) / 3
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4)
    torch.testing.assert_close(adv, expected)


def test_groups_are_independent_and_contiguous():
    adv = group_advantages(torch.tensor([0.0, 2.0, 10.0, 30.0]), group_size=2).advantages
    s1, s2 = math.sqrt(2.0), math.sqrt(200.0)
    torch.testing.assert_close(
        adv, torch.tensor([-1 / (s1 + 1e-4), 1 / (s1 + 1e-4), -10 / (s2 + 1e-4), 10 / (s2 + 1e-4)])
    )


def test_nan_rows_get_zero_and_are_ignored_by_group_stats():
    adv = group_advantages(torch.tensor([1.0, NAN, 3.0]), group_size=3)
    # mean of the two scored values is 2, unbiased std is sqrt(2)
    torch.testing.assert_close(
        adv.advantages, torch.tensor([-1 / (math.sqrt(2) + 1e-4), 0.0, 1 / (math.sqrt(2) + 1e-4)])
    )


def test_all_nan_and_all_equal_groups_give_zero():
    out = group_advantages(torch.tensor([NAN, NAN, 5.0, 5.0, 5.0, 5.0]), group_size=2)
    assert torch.equal(out.advantages, torch.zeros(6))
    assert not torch.isnan(out.advantages).any()
    assert out.frac_zero_std == 1.0


def test_single_scored_value_has_zero_std_not_nan():
    assert float(nanstd(torch.tensor([3.0, NAN]))) == 0.0
    assert torch.equal(group_advantages(torch.tensor([3.0, NAN]), 2).advantages, torch.zeros(2))


def test_scale_none_and_batch():
    r = torch.tensor([1.0, 3.0, 0.0, 4.0])
    torch.testing.assert_close(
        group_advantages(r, 2, scale="none").advantages, torch.tensor([-1.0, 1.0, -2.0, 2.0])
    )
    batch_std = float(torch.std(r))  # unbiased over the batch
    torch.testing.assert_close(
        group_advantages(r, 2, scale="batch").advantages,
        torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (batch_std + 1e-4),
    )
    with pytest.raises(ValueError, match="unknown scale"):
        group_advantages(r, 2, scale="global")


def test_weighted_sum_nan_semantics():
    scores = torch.tensor([[1.0, NAN], [NAN, NAN], [0.5, 2.0]])
    out = weighted_sum(scores, torch.tensor([2.0, 3.0]))
    assert out[0] == 2.0 and math.isnan(out[1]) and out[2] == 7.0


# ---------------------------------------------------------------- the policy loss
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
ADV = torch.tensor([1.0, -2.0])


@pytest.mark.parametrize("loss_type,expected", [("grpo", 0.5), ("dapo", 0.8), ("dr_grpo", 4.0 / 6.0)])
def test_loss_reductions_hand_computed(loss_type, expected):
    # ratio = 1 everywhere, so the per-token loss is -A: row 0 -> [-1, -1], row 1 -> [2, 2, 2]
    logp = torch.full((2, 3), -1.0)
    out = grpo_policy_loss(logp, logp, None, ADV, MASK, loss_type=loss_type, beta=0.0)
    assert float(out.loss) == pytest.approx(expected)


def test_clipping_is_pessimistic():
    old = torch.zeros(2, 1)
    logp = torch.full((2, 1), math.log(1.5))  # ratio 1.5
    mask = torch.ones(2, 1)
    pos = grpo_policy_loss(logp[:1], old[:1], None, torch.tensor([1.0]), mask[:1], eps_low=0.2)
    neg = grpo_policy_loss(logp[1:], old[1:], None, torch.tensor([-1.0]), mask[1:], eps_low=0.2)
    assert float(pos.loss) == pytest.approx(-1.2)  # clipped at 1 + 0.2
    assert float(pos.clip_high) == 1.0 and float(pos.clip_region) == 1.0
    assert float(neg.loss) == pytest.approx(1.5)  # unclipped: min picks the worse value
    assert float(neg.clip_low) == 0.0
    hi = grpo_policy_loss(logp[:1], old[:1], None, torch.tensor([1.0]), mask[:1], eps_low=0.2, eps_high=0.28)
    assert float(hi.loss) == pytest.approx(-1.28)


def test_k3_kl_hand_computed_and_in_loss():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    expected = 0.5 - math.log(0.5) - 1.0  # exp(d) - d - 1 with d = log(0.25 / 0.5)
    assert float(k3_kl(logp, ref)) == pytest.approx(expected)
    assert float(k3_kl(ref, ref)) == 0.0
    out = grpo_policy_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1), beta=0.1)
    assert float(out.loss) == pytest.approx(0.1 * expected)
    assert float(out.kl) == pytest.approx(expected)


def test_gradient_pushes_up_positive_advantage_tokens():
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    grpo_policy_loss(logp, logp.detach(), None, ADV, MASK, loss_type="grpo").loss.backward()
    # d loss / d logp = -A / (len_i * B) on each unmasked token
    expected = torch.tensor([[-1 / 4, -1 / 4, 0.0], [2 / 6, 2 / 6, 2 / 6]])
    torch.testing.assert_close(logp.grad, expected)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_sum_to_the_full_batch_loss(loss_type):
    g = torch.Generator().manual_seed(0)
    logp, old, ref = (torch.randn(6, 5, generator=g) for _ in range(3))
    adv = torch.randn(6, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    full = grpo_policy_loss(
        logp, old, ref, adv, mask, loss_type=loss_type, beta=0.05, max_completion_length=5
    ).loss
    total = 0.0
    for sl in (slice(0, 2), slice(2, 5), slice(5, 6)):
        part = grpo_policy_loss(
            logp[sl],
            old[sl],
            ref[sl],
            adv[sl],
            mask[sl],
            loss_type=loss_type,
            beta=0.05,
            max_completion_length=5,
        ).loss
        total += float(part) * chunk_weight(loss_type, mask[sl], mask)
    assert total == pytest.approx(float(full), rel=1e-5)


def test_selective_log_softmax():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probs 1/4, 3/4
    assert float(selective_log_softmax(logits, torch.tensor([[1]]))) == pytest.approx(math.log(0.75))


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="unknown loss_type"):
        grpo_policy_loss(
            torch.zeros(1, 1), torch.zeros(1, 1), None, torch.zeros(1), torch.ones(1, 1), loss_type="ppo"
        )
