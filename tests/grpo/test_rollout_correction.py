"""Rollout correction (grpo/loss.py): per-token weights by hand, the exact no-op when the sampler
is the trainer, the HF engine's sampling log-probs against the trainer's, and the switch end to end."""

from __future__ import annotations

import math

import pytest
import torch

from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.grpo.loss import correction_stats, grpo_policy_loss, importance_weights
from quark_lightning.infra.errors import ConfigError
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.scorers.format import FormatScorer

LN = math.log


def close(t: torch.Tensor, expected) -> bool:
    return torch.allclose(t.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7)
# row 0: ratios 3 (above the cap 2), 0.5, 1; row 1: ratio 1.5, then a masked token whose ratio would be e^5
TRAINER = torch.tensor([[LN(3.0), LN(0.5), 0.0], [LN(1.5), 5.0, 0.0]])
SAMPLER = torch.zeros(2, 3)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_token_truncate_caps_each_ratio_and_ignores_masked_tokens():
    w, over = importance_weights(TRAINER, SAMPLER, MASK, cap=2.0, mode="token_truncate")
    assert close(w, [[2.0, 0.5, 1.0], [1.5, 0.0, 0.0]])
    assert over.tolist() == [[True, False, False], [False, False, False]]  # the masked e^5 is not counted


def test_token_mask_drops_the_tokens_above_the_cap():
    w, _ = importance_weights(TRAINER, SAMPLER, MASK, cap=2.0, mode="token_mask")
    assert close(w, [[0.0, 0.5, 1.0], [1.5, 0.0, 0.0]])


def test_sequence_modes_use_the_completions_likelihood_ratio():
    # row 0: 3 x 0.5 x 1 = 1.5 (under the cap); row 1: 1.5 (the masked token is left out)
    w, _ = importance_weights(TRAINER, SAMPLER, MASK, cap=2.0, mode="sequence_truncate")
    assert close(w, [[1.5, 1.5, 1.5], [1.5, 0.0, 0.0]])
    w, over = importance_weights(TRAINER, SAMPLER, MASK, cap=1.2, mode="sequence_mask")
    assert close(w, [[0.0] * 3, [0.0] * 3]) and over[0].all()
    w, _ = importance_weights(TRAINER, SAMPLER, MASK, cap=1.2, mode="sequence_truncate")
    assert close(w, [[1.2, 1.2, 1.2], [1.2, 0.0, 0.0]])


def test_mismatch_statistics_by_hand():
    stats = correction_stats(TRAINER, SAMPLER, MASK, cap=2.0)
    # sampler - trainer over the 4 unmasked tokens: -ln 3, -ln 0.5, 0, -ln 1.5
    assert stats.kl == pytest.approx((-LN(3.0) - LN(0.5) - LN(1.5)) / 4)
    assert stats.capped_share == pytest.approx(0.25) and stats.tokens == 4.0


def test_with_the_sampler_equal_to_the_trainer_the_corrected_loss_is_the_uncorrected_one_exactly():
    torch.manual_seed(0)
    logp = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    old = logp.detach() + 0.01 * torch.randn(3, 5, dtype=torch.float64)
    ref = logp.detach() - 0.05
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    w, over = importance_weights(old, old.clone(), mask, cap=2.0)
    assert not over.any() and torch.equal(w, mask)  # exp(0) = 1 exactly on every token
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        plain = grpo_policy_loss(logp, old, ref, adv, mask, loss_type=loss_type, beta=0.04)
        corrected = grpo_policy_loss(logp, old, ref, adv, mask, loss_type=loss_type, beta=0.04, is_weight=w)
        assert torch.equal(plain.loss, corrected.loss)


def test_the_weight_scales_only_the_policy_gradient_term():
    logp = torch.zeros(1, 2, requires_grad=True)
    mask, adv = torch.ones(1, 2), torch.tensor([1.0])
    w = torch.tensor([[2.0, 0.5]])
    out = grpo_policy_loss(logp, logp.detach(), None, adv, mask, is_weight=w)
    out.loss.backward()
    # grpo loss = mean_t(-w_t * ratio_t * A); d/d logp_t at ratio 1 = -w_t * A / 2
    assert close(logp.grad, [[-1.0, -0.25]])


# ------------------------------------------------------------------------------------------- engine and module
def _module(tiny_model_dir, decode="fast", **options) -> GRPOModule:
    torch.manual_seed(0)
    loaded = load_causal_lm(tiny_model_dir)
    config = GRPOConfig(num_generations=2, beta=0.0, lr=5e-3, max_grad_norm=None, **options)
    matrix = AlignmentMatrix([Dimension("format_rules", "format", FormatScorer(min_words=1, max_words=40))])
    engine = HFGenerateEngine(max_new_tokens=8, temperature=0.7, decode=decode)
    module = GRPOModule(loaded.model, loaded.tokenizer, matrix, config, engine)
    opt = torch.optim.SGD([p for p in module.policy.parameters() if p.requires_grad], lr=config.lr)
    module.optimizers = lambda: opt
    module.lr_schedulers = lambda: None
    module.manual_backward = lambda loss: loss.backward()
    return module


def test_the_hf_engine_returns_the_samplers_log_probs_and_they_match_the_trainers(tiny_model_dir, bundled_records):
    module = _module(tiny_model_dir)
    torch.manual_seed(1)
    rollout = module.engine.generate(module.policy, module.tokenizer, bundled_records[:2], 2)
    assert rollout.sampling_logp is not None and rollout.sampling_logp.shape == rollout.completion_ids.shape
    assert torch.equal(rollout.sampling_logp == 0, rollout.completion_mask == 0)  # 0 exactly off the mask
    trainer = module.logps.of_rollout(module.policy, rollout)  # at the engine's temperature 0.7
    mask = rollout.completion_mask.bool()
    # fp32 incremental decode vs one full forward: the same distribution up to rounding
    assert torch.allclose(rollout.sampling_logp[mask], trainer[mask], atol=1e-4)
    greedy = module.engine.generate(module.policy, module.tokenizer, bundled_records[:2], 1, greedy=True)
    assert greedy.sampling_logp is None  # evaluation answers keep none


def test_the_correction_runs_in_a_step_logs_the_mismatch_and_refuses_an_engine_without_log_probs(
    tiny_model_dir, bundled_records
):
    module = _module(tiny_model_dir, vllm_importance_sampling_correction=True)
    torch.manual_seed(1)
    rollout = module.engine.generate(module.policy, module.tokenizer, bundled_records[:2], 2)
    before = [p.detach().clone() for p in module.policy.parameters()]
    stats = module.update_policy(rollout, torch.tensor([1.0, -1.0, 0.5, -0.5]), None, None)
    assert abs(stats["sampling/kl"]) < 1e-4 and stats["sampling/capped_share"] == 0.0
    assert not all(torch.equal(a, b) for a, b in zip(before, module.policy.parameters()))

    plain = _module(tiny_model_dir, decode="generate", vllm_importance_sampling_correction=True)
    rollout = plain.engine.generate(plain.policy, plain.tokenizer, bundled_records[:2], 2)
    assert rollout.sampling_logp is None
    with pytest.raises(ConfigError, match="needs the sampler's log-probs.*Fix: rollout.decode=fast"):
        plain.update_policy(rollout, torch.tensor([1.0, -1.0, 0.5, -0.5]), None, None)


def test_bad_correction_settings_name_the_key():
    from dataclasses import replace

    for options, key in [
        ({"vllm_importance_sampling_mode": "token"}, "vllm_importance_sampling_mode"),
        ({"vllm_importance_sampling_cap": 0.5}, "vllm_importance_sampling_cap"),
        ({"vllm_importance_sampling_correction": "yes"}, "vllm_importance_sampling_correction"),
    ]:
        with pytest.raises(ConfigError, match=f"algorithm.{key}: got"):
            replace(GRPOConfig(), **options)
