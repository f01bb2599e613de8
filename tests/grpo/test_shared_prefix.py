"""The shared-prompt forward gives the plain forward's completion logits and gradients (grpo/shared_prefix.py)."""

from __future__ import annotations

import torch

from quark_lightning.grpo.shared_prefix import (
    completion_logits,
    plain_completion_logits,
    rows_grouped,
    shared_prefix_completion_logits,
)
from quark_lightning.models.loading import apply_lora
from quark_lightning.rollout.hf_generate import HFGenerateEngine


def grouped_batch(tiny_model, bundled_records, G=3, C=7):
    torch.manual_seed(0)
    model, tok = tiny_model.model, tiny_model.tokenizer
    rollout = HFGenerateEngine(max_new_tokens=C).generate(model, tok, bundled_records[:2], G)
    return model, rollout


def test_logits_equal_the_plain_forward(tiny_model, bundled_records):
    model, r = grouped_batch(tiny_model, bundled_records)
    C = r.completion_ids.size(1)
    assert rows_grouped(r.prompt_ids, r.prompt_mask, 3)
    with torch.no_grad():
        plain = plain_completion_logits(model, r.input_ids, r.attention_mask, C)
        shared = shared_prefix_completion_logits(model, r.input_ids, r.attention_mask, C, 3)
    valid = r.completion_mask.bool()  # positions after EOS are never used
    torch.testing.assert_close(shared[valid], plain[valid], atol=1e-5, rtol=1e-5)


def test_gradients_equal_the_plain_forward(tiny_model, bundled_records):
    model, r = grouped_batch(tiny_model, bundled_records)
    C = r.completion_ids.size(1)
    mask = r.completion_mask.float()

    def grads(fn):
        model.zero_grad()
        logits = fn()
        logp = torch.log_softmax(logits, -1).gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1)
        ((logp * mask).sum() / mask.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads(lambda: plain_completion_logits(model, r.input_ids, r.attention_mask, C))
    shared = grads(lambda: shared_prefix_completion_logits(model, r.input_ids, r.attention_mask, C, 3))
    for name in plain:
        torch.testing.assert_close(shared[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_lora_and_ungrouped_rows(tiny_model, bundled_records):
    model, r = grouped_batch(tiny_model, bundled_records)
    C = r.completion_ids.size(1)
    policy = apply_lora(model, 4, 8, 0.0, "all-linear")
    with torch.no_grad():
        plain = plain_completion_logits(policy, r.input_ids, r.attention_mask, C)
        shared = completion_logits(policy, r.input_ids, r.attention_mask, C, 3)
        odd = completion_logits(policy, r.input_ids[1:5], r.attention_mask[1:5], C, 3)  # splits a group
    valid = r.completion_mask.bool()
    torch.testing.assert_close(shared[valid], plain[valid], atol=1e-5, rtol=1e-5)
    assert not rows_grouped(r.prompt_ids[1:5], r.prompt_mask[1:5], 3)
    torch.testing.assert_close(odd, plain[1:5], atol=0, rtol=0)  # the plain path, bit for bit
