"""TRL-named GRPO options against hand-computed numbers and TRL's definitions: GSPO's sequence ratio,
two-sided clipping (delta), masked truncated completions, the entropy bonus's gradient, mini-batches
per rollout (steps_per_generation) and the learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from quark_lightning.grpo.dynamic_sampling import redraw, refill
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.grpo.logprobs import chunked_selective_log_softmax, token_entropy
from quark_lightning.grpo.loss import clipped_surrogate, grpo_policy_loss, importance_log_ratio
from quark_lightning.grpo.policy_update import loss_mask
from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.schedules import lr_scheduler
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.rollout.engine import Rollout
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.scorers.format import FormatScorer


# ------------------------------------------------------------------------------------------- GSPO
def test_gspo_ratio_is_the_length_normalized_sequence_ratio():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    old = torch.tensor([[-1.1, -2.3, -9.0], [-0.5, -0.7, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    seq = importance_log_ratio(logp, old, mask, "sequence")
    # row 0: (0.1 + 0.3) / 2 (the masked third token is ignored); row 1: (0 + 0.2 + 0) / 3
    assert seq.squeeze(1).tolist() == pytest.approx([0.2, 0.2 / 3])
    assert torch.equal(importance_log_ratio(logp, old, mask, "token"), logp - old)
    adv = torch.tensor([1.0, -1.0])
    surrogate, low, high = clipped_surrogate(logp, old, adv, 0.2, 0.2, level="sequence", mask=mask)
    # row 0: ratio e^0.2 = 1.2214 > 1.2 with A > 0 -> clipped at 1.2 on every token; row 1: e^0.0667 unclipped
    assert surrogate[0].tolist() == pytest.approx([1.2, 1.2, 1.2])
    assert surrogate[1].tolist() == pytest.approx([-math.exp(0.2 / 3)] * 3)
    assert high[0].all() and not low.any()


def test_gspo_gradient_is_shared_by_the_tokens_of_a_completion():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], requires_grad=True)
    old = logp.detach() - torch.tensor([[0.01, 0.02, 0.03, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = grpo_policy_loss(logp, old, None, torch.tensor([2.0]), mask, importance_sampling_level="sequence")
    out.loss.backward()
    ratio = math.exp(0.02)  # mean of 0.01, 0.02, 0.03
    # loss = -ratio * A (every token carries the same surrogate); d ratio / d logp_t = ratio / 3 per token
    assert logp.grad[0, :3].tolist() == pytest.approx([-2.0 * ratio / 3] * 3)
    assert logp.grad[0, 3].item() == 0.0


# ------------------------------------------------------------------------------------------- delta
def test_delta_caps_the_unclipped_ratio_of_negative_advantages():
    logp, old = torch.tensor([[math.log(3.0)]]), torch.tensor([[0.0]])  # ratio 3
    adv = torch.tensor([-1.0])
    plain, _, _ = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    two_sided, _, _ = clipped_surrogate(logp, old, adv, 0.2, 0.2, delta=2.0)
    assert plain.item() == pytest.approx(-3.0)  # min(3 * -1, 1.2 * -1)
    assert two_sided.item() == pytest.approx(-2.0)  # min(min(3, 2) * -1, 1.2 * -1)
    with pytest.raises(
        ConfigError, match=r"algorithm\.delta: got 1\.1, expected null or a number > 1 \+ epsilon_high"
    ):
        GRPOConfig(delta=1.1)


# ------------------------------------------------------------------------------------------- entropy
def test_chunked_entropy_gradient_equals_autograd_and_its_bonus_raises_entropy():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    ids = torch.randint(0, 11, (2, 5))
    coef = torch.randn(2, 5)  # arbitrary upstream gradients for logp and entropy
    logp, ent = chunked_selective_log_softmax(
        hidden, weight, ids, temperature=0.7, chunk_size=3, with_entropy=True, entropy_grad=True
    )
    ((logp * coef).sum() + (ent * coef.flip(0)).sum()).backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    logits = (hidden @ weight.T) / 0.7
    ref_logp = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    ((ref_logp * coef).sum() + (token_entropy(logits) * coef.flip(0)).sum()).backward()
    assert torch.allclose(got[0], hidden.grad, atol=1e-5) and torch.allclose(got[1], weight.grad, atol=1e-5)

    # the bonus's sign: one gradient step on the loss -c * H raises the entropy
    z = torch.tensor([[[3.0, 0.0, -1.0]]], requires_grad=True)
    before = token_entropy(z).item()
    mask = torch.ones(1, 1)
    out = grpo_policy_loss(
        torch.zeros(1, 1),
        torch.zeros(1, 1),
        None,
        torch.zeros(1),
        mask,
        entropy=token_entropy(z),
        entropy_coef=0.1,
    )
    out.loss.backward()
    assert token_entropy(z.detach() - 1.0 * z.grad).item() > before


# ------------------------------------------------------------------------------------------- module level
def _module(tiny_model_dir, **options) -> GRPOModule:
    torch.manual_seed(0)
    loaded = load_causal_lm(tiny_model_dir)
    config = GRPOConfig(num_generations=2, beta=0.0, lr=5e-3, max_grad_norm=None, **options)
    matrix = AlignmentMatrix([Dimension("format_rules", "format", FormatScorer(min_words=1, max_words=40))])
    module = GRPOModule(loaded.model, loaded.tokenizer, matrix, config, HFGenerateEngine(max_new_tokens=6))
    opt = torch.optim.SGD([p for p in module.policy.parameters() if p.requires_grad], lr=config.lr)
    module.optimizers = lambda: opt  # update_policy without a Trainer: plain SGD, plain backward
    module.lr_schedulers = lambda: None
    module.manual_backward = lambda loss: loss.backward()
    return module


def _rollout(module, bundled_records, n_prompts=2) -> Rollout:
    torch.manual_seed(1)
    return module.engine.generate(module.policy, module.tokenizer, bundled_records[:n_prompts], 2)


def _rows(rollout: Rollout, rows: slice) -> Rollout:
    return Rollout(
        **{k: (v[rows] if isinstance(v, (torch.Tensor, list)) else v) for k, v in vars(rollout).items()}
    )


def _params(module):
    return [p.detach().clone() for p in module.policy.parameters()]


def test_masked_truncated_completions_contribute_nothing(tiny_model_dir, bundled_records):
    module = _module(tiny_model_dir, mask_truncated_completions=True)
    rollout = _rollout(module, bundled_records)
    assert rollout.truncated.all()  # 6 new tokens: every completion is cut at the cap
    assert loss_mask(rollout, mask_truncated_completions=True).sum() == 0
    before = _params(module)
    module.update_policy(rollout, torch.tensor([1.0, -1.0, 0.5, -0.5]), None, None)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(module)))
    plain = _module(tiny_model_dir)  # without the option the same rollout moves the policy
    plain.update_policy(rollout, torch.tensor([1.0, -1.0, 0.5, -0.5]), None, None)
    assert not all(torch.equal(a, b) for a, b in zip(before, _params(plain)))


def test_steps_per_generation_equals_the_same_mini_batches_stepped_one_by_one(
    tiny_model_dir, bundled_records
):
    split = _module(tiny_model_dir, steps_per_generation=2)
    rollout = _rollout(split, bundled_records)
    advantages = torch.tensor([1.0, -1.0, 0.7, -0.7])
    old = split.logps.of_rollout(
        split.policy, rollout
    )  # the generating policy's log-probs, as training_step computes them
    one_by_one = _module(tiny_model_dir)
    one_by_one.load_state_dict(split.state_dict())
    stats = split.update_policy(rollout, advantages, None, old)
    for rows in (slice(0, 2), slice(2, 4)):
        one_by_one.update_policy(_rows(rollout, rows), advantages[rows], None, old[rows])
    for a, b in zip(_params(split), _params(one_by_one)):
        assert torch.allclose(a, b, atol=1e-6)
    assert stats["loss"] != 0.0
    with pytest.raises(ConfigError, match="steps_per_generation=3 needs at least 3 prompts"):
        _module(tiny_model_dir, steps_per_generation=3).update_policy(rollout, advantages, None, old)


def test_bad_option_values_name_the_key():
    for options, key in [
        ({"importance_sampling_level": "seq"}, "importance_sampling_level"),
        ({"steps_per_generation": 0}, "steps_per_generation"),
        ({"entropy_coef": -0.1}, "entropy_coef"),
        ({"mask_truncated_completions": "yes"}, "mask_truncated_completions"),
        ({"dynamic_sampling_max_draws": -1}, "dynamic_sampling_max_draws"),
    ]:
        with pytest.raises(ConfigError, match=f"algorithm.{key}: got"):
            replace(GRPOConfig(), **options)


# ------------------------------------------------------------------------------------------- schedules
def _lrs(name: str, steps: int = 10, **kwargs) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = lr_scheduler(opt, name, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_give_the_textbook_learning_rates():
    assert _lrs("constant") == [1.0] * 10
    assert _lrs("constant_with_warmup", warmup_steps=4)[:6] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert _lrs("linear", warmup_steps=2, total_steps=10)[:5] == pytest.approx([0.0, 0.5, 1.0, 7 / 8, 6 / 8])
    cosine = _lrs("cosine", warmup_steps=0, total_steps=10)
    assert cosine == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])
    floor = _lrs("cosine_with_min_lr", total_steps=10, min_lr_rate=0.1)
    assert floor[5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ConfigError, match="total_steps"):
        _lrs("cosine", warmup_steps=5, total_steps=5)
    with pytest.raises(ConfigError, match="'constant' has no warmup"):
        _lrs("constant", warmup_steps=3)


def test_the_module_steps_its_configured_schedule(tiny_model_dir):
    import functools

    loaded = load_causal_lm(tiny_model_dir)
    matrix = AlignmentMatrix([Dimension("format_rules", "format", FormatScorer())])
    factory = functools.partial(lr_scheduler, name="cosine", warmup_steps=0, total_steps=4)
    module = GRPOModule(loaded.model, loaded.tokenizer, matrix, GRPOConfig(lr=0.1), lr_scheduler=factory)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert sched.get_last_lr() == pytest.approx([0.1])
    sched.optimizer.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi / 4))])


# ------------------------------------------------------------------------------------------- dynamic sampling
def test_groups_without_spread_and_the_batch_plan():
    from quark_lightning.grpo.dynamic_sampling import group_has_spread, plan_batch

    reward = torch.tensor([1.0, 1.0, 0.0, 2.0, 3.0, 3.0, float("nan"), 5.0])  # 4 groups of 2
    assert group_has_spread(reward, 2).tolist() == [False, True, False, False]
    # draw 0: groups 1 and 3 have spread; draw 1: group 0 -> three groups for a target of 3, none filled
    chosen, filled = plan_batch([torch.tensor([False, True, False, True]), torch.tensor([True, False])], 3)
    assert chosen == [[1, 3], [0]] and filled == 0
    chosen, filled = plan_batch([torch.tensor([False, True, False])], 3)  # the cap was hit: fill with two
    assert chosen == [[0, 1, 2]] and filled == 2


class PromptDependentScorer:
    """Constant on prompts whose id starts with 'card' (no spread), the completion's length otherwise."""

    def score(self, prompts, completions):
        from quark_lightning.scorers.interface import ScoreResult

        values = [1.0 if p["id"].startswith("card") else float(len(c)) for p, c in zip(prompts, completions)]
        return ScoreResult.from_lists(values, [[] for _ in values])


class Source:
    def __init__(self, records):
        self.records, self.calls = records, 0

    def draw_prompts(self, n, seed):
        self.calls += 1
        return self.records[self.calls * n : (self.calls + 1) * n]


def _dynamic_module(tiny_model_dir, records, max_draws):
    module = _module(tiny_model_dir, dynamic_sampling=True, dynamic_sampling_max_draws=max_draws)
    module.matrix = AlignmentMatrix([Dimension("length", "format", PromptDependentScorer())])
    module.prompt_source = Source(records)
    return module


def test_dynamic_sampling_never_leaves_a_zero_spread_group_when_it_can_refill(
    tiny_model_dir, bundled_records
):
    records = [r for r in bundled_records if r["id"].startswith("card")][:2] + [
        r for r in bundled_records if not r["id"].startswith("card")
    ][:8]
    module = _dynamic_module(tiny_model_dir, records, max_draws=3)
    batch = records[:2]  # both 'card' prompts: no spread at all
    rollout = module.engine.generate(module.policy, module.tokenizer, batch, 2)
    first = (rollout, module.score_matrix(rollout))
    (rollout, scores), stats = refill(module.resampler(), first, len(batch), 3, seed=(0, 0))
    ids = [p["id"] for p in rollout.prompts]
    assert len(ids) == 4 and not any(i.startswith("card") for i in ids)
    reward = scores.scores[:, 0]
    assert reward.view(-1, 2).std(1).gt(0).all()  # every group in the batch has a reward spread
    assert stats["dynamic_sampling/zero_std_groups"] == 0.0
    assert stats["dynamic_sampling/extra_draws"] >= 1.0
    assert rollout.completion_ids.size(0) == 4 and len(scores.findings["length"]) == 4


def test_dynamic_sampling_stops_at_its_cap_and_says_so(tiny_model_dir, bundled_records):
    cards = [r for r in bundled_records if r["id"].startswith("card")][:8]
    module = _dynamic_module(tiny_model_dir, cards, max_draws=2)
    batch = cards[:2]
    rollout = module.engine.generate(module.policy, module.tokenizer, batch, 2)
    first = (rollout, module.score_matrix(rollout))
    (rollout, _), stats = refill(module.resampler(), first, len(batch), 2, seed=(0, 0))
    assert stats["dynamic_sampling/extra_draws"] == 2.0 and stats["dynamic_sampling/zero_std_groups"] == 2.0
    assert stats["dynamic_sampling/zero_std_groups_drawn"] == 6.0  # 3 draws x 2 groups
    assert [p["id"] for p in rollout.prompts] == [cards[0]["id"]] * 2 + [cards[1]["id"]] * 2


class PassesOnTheSecondCall:
    """A gate dimension nobody passes at first (every answer 0), then the first answer of each group does."""

    def __init__(self):
        self.calls = 0

    def score(self, prompts, completions):
        from quark_lightning.scorers.interface import ScoreResult

        self.calls += 1
        values = [float(self.calls > 1 and i % 2 == 0) for i in range(len(completions))]
        return ScoreResult.from_lists(values, [[] for _ in values])


def test_groups_without_a_passing_answer_are_sampled_again(tiny_model_dir, bundled_records):
    from quark_lightning.grpo.dynamic_sampling import groups_without_a_pass
    from quark_lightning.matrix.dimension import Gate

    gate = [(0, Gate(below=1.0))]
    nan = float("nan")
    scores = torch.tensor([[0.0], [0.0], [1.0], [0.0], [nan], [nan]])
    failed = torch.zeros(6, 1, dtype=torch.bool)
    assert groups_without_a_pass(scores, failed, gate, 2).tolist() == [True, False, False]  # NaN: no gate
    failed[2, 0] = True  # a failed score never clears the gate
    assert groups_without_a_pass(scores, failed, gate, 2).tolist() == [True, True, False]

    module = _module(tiny_model_dir, redraw_gated_groups=2)
    module.matrix = AlignmentMatrix([Dimension("triage", "fundamental", PassesOnTheSecondCall())])
    module.shaping.gates = gate
    batch = bundled_records[:2]
    rollout = module.engine.generate(module.policy, module.tokenizer, batch, 2)
    (rollout, scored), stats = redraw(module.resampler(), (rollout, module.score_matrix(rollout)), gate, 2)
    assert [p["id"] for p in rollout.prompts] == [batch[0]["id"]] * 2 + [batch[1]["id"]] * 2  # same prompts
    assert scored.scores[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]  # the redrawn groups replaced the old ones
    assert stats == {"redraw/groups_without_a_pass": 2.0, "redraw/replaced": 2.0}


# ------------------------------------------------------------------------------------------- stop strings, EOS ids
def test_completion_mask_ends_at_any_stop_id_or_stop_position():
    from quark_lightning.rollout.engine import completion_mask_from_ids

    ids = torch.tensor([[5, 7, 2, 9], [5, 6, 6, 6], [1, 1, 1, 1]])
    mask, cut = completion_mask_from_ids(ids, [2, 7])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]] and cut.tolist() == [False, True, True]
    mask, cut = completion_mask_from_ids(ids, [2], stop_at=torch.tensor([4, 1, 4]))
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]] and cut.tolist() == [
        False,
        False,
        True,
    ]


def _greedy(tiny_model_dir, bundled_records, **engine):
    loaded = load_causal_lm(tiny_model_dir)
    return HFGenerateEngine(max_new_tokens=12, **engine).generate(
        loaded.model, loaded.tokenizer, bundled_records[:2], 1, greedy=True
    ), loaded.tokenizer


@pytest.mark.parametrize("decode", ["fast", "generate"])
def test_extra_eos_ids_and_stop_strings_end_completions(noisy_model_dir, bundled_records, decode):
    tiny_model_dir = noisy_model_dir  # varied tokens: a stop string can sit mid-completion
    plain, tok = _greedy(tiny_model_dir, bundled_records, decode=decode)
    row = plain.completion_ids[0].tolist()
    # an extra EOS id: the 4th generated token ends the first completion there (inclusive)
    eos_cut, _ = _greedy(tiny_model_dir, bundled_records, decode=decode, eos_token_ids=[row[3]])
    first = row.index(row[3])
    assert eos_cut.completion_mask[0].sum() == first + 1 and not eos_cut.truncated[0]
    # a stop string: the text of tokens 5..6; the completion ends with the token that completes it
    stop = tok.decode(row[5:7])
    assert stop.strip(), "the tiny model's tokens 5..6 decode to whitespace only"
    cut, _ = _greedy(tiny_model_dir, bundled_records, decode=decode, stop_strings=[stop])
    n = int(cut.completion_mask[0].sum())
    assert stop in tok.decode(row[:n]) and stop not in tok.decode(row[: n - 1]) and n <= 7
    assert not cut.truncated[0] and cut.completion_ids[0, :n].tolist() == row[:n]


def test_bad_stop_settings_are_refused():
    with pytest.raises(ConfigError, match="rollout.stop_strings"):
        HFGenerateEngine(stop_strings="</answer>")
    with pytest.raises(ConfigError, match="rollout.eos_token_ids"):
        HFGenerateEngine(eos_token_ids=[-1])


def test_soft_overlong_punishment_is_dapos_linear_ramp():
    scorer = FormatScorer(rules=["soft_overlong"], overlong_max_words=20, overlong_cache_words=10)

    def score(n: int) -> float:
        return scorer.score([{"id": "p"}], [" ".join(["word"] * n)]).scores.item()

    # credit 1 up to L_max - L_cache = 10 words, (20 - L) / 10 between, 0 beyond 20 (penalty = credit - 1)
    assert [score(n) for n in (5, 10, 12, 15, 20, 30)] == pytest.approx([1.0, 1.0, 0.8, 0.5, 0.0, 0.0])
    both = FormatScorer(
        rules=["clean_ending", "soft_overlong"], overlong_max_words=20, overlong_cache_words=10
    )
    out = both.score([{"id": "p"}], [" ".join(["word"] * 15)])  # no final punctuation and half the credit
    assert out.scores.item() == pytest.approx(0.25)
    assert out.findings[0][-1] == "soft_overlong: 15 words, past 10 (credit 0.50; 0 from 20 words)"
    with pytest.raises(ValueError, match="overlong_cache_words"):
        FormatScorer(overlong_max_words=10, overlong_cache_words=0)
