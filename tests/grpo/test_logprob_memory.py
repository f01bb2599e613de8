"""Training log-probs: the chunked LM-head path equals the full-logits path (values and gradients, full
fine-tuning and LoRA, shared-prefix and plain forwards) without holding (n, C, V) logits; log-probs use the
sampling temperature; gradient checkpointing gives the same loss and gradients."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import quark_lightning.grpo.logprobs as logprobs
import quark_lightning.grpo.shared_prefix as shared_prefix
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.grpo.logprobs import (
    chunked_selective_log_softmax,
    micro_batches,
    selective_log_softmax,
    token_entropy,
)
from quark_lightning.grpo.loss import grpo_policy_loss
from quark_lightning.grpo.shared_prefix import checkpointing_active, split_lm_head
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.models.loading import apply_lora, load_causal_lm
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.scorers.format import FormatScorer
from tests.grpo.test_grpo_module import fit

G, C = 3, 7


def make_module(tiny_model_dir, lora=False, temperature=1.0, **cfg):
    loaded = load_causal_lm(tiny_model_dir)
    policy = loaded.model
    if lora:
        torch.manual_seed(1)
        policy = apply_lora(policy, 4, 8, 0.0, "all-linear")
        with torch.no_grad():  # lora_B starts at 0 (policy == reference); move it so they differ
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05)
    config = GRPOConfig(num_generations=G, beta=0.04, **cfg)
    matrix = AlignmentMatrix([Dimension("format_rules", "format", FormatScorer(min_words=3, max_words=40))])
    engine = HFGenerateEngine(max_new_tokens=C, temperature=temperature)
    module = GRPOModule(policy, loaded.tokenizer, matrix, config, engine)
    module.policy.train()
    return module


def rollout_of(module, records):
    torch.manual_seed(0)
    return module.engine.generate(module.policy, module.tokenizer, records[:2], G)


def loss_and_grads(module, rollout, iteration_logps=None):
    """The training step's loss on one rollout (as training_step computes it), and the policy grads."""
    module.policy.zero_grad(set_to_none=True)
    mask = rollout.completion_mask.float()
    ref = module.reference_logps(rollout)
    advantages = torch.linspace(-1.0, 1.0, mask.size(0))
    total, entropy = 0.0, 0.0
    for sl in micro_batches(mask.size(0), module.config.micro_batch_size):
        logp, ent = module.logps(
            module.policy,
            rollout.input_ids[sl],
            rollout.attention_mask[sl],
            rollout.completion_ids[sl],
            mask[sl],
            with_entropy=True,
        )
        out = grpo_policy_loss(logp, logp.detach(), ref[sl], advantages[sl], mask[sl], beta=0.04)
        w = mask[sl].size(0) / mask.size(0)
        (out.loss * w).backward()
        total += float(out.loss) * w
        entropy += float((ent * mask[sl]).sum() / mask.sum())
    grads = {n: p.grad.clone() for n, p in module.policy.named_parameters() if p.grad is not None}
    return total, entropy, ref, grads


# ---------------------------------------------------------------------------------- the function
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_log_softmax_equals_full_values_and_grads(temperature):
    torch.manual_seed(0)
    B, T, H, V = 3, 5, 16, 37
    hidden = torch.randn(B, T, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    bias = torch.randn(V, requires_grad=True)
    ids = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    coef = torch.randn(B, T)  # a generic upstream gradient

    def run(chunked: bool):
        for t in (hidden, weight, bias):
            t.grad = None
        if chunked:
            logp, ent = chunked_selective_log_softmax(
                hidden,
                weight,
                ids,
                bias=bias,
                temperature=temperature,
                chunk_size=4,
                mask=mask,
                with_entropy=True,
            )
        else:
            logits = torch.nn.functional.linear(hidden, weight, bias)
            logp, ent = (
                selective_log_softmax(logits, ids, temperature),
                token_entropy(logits.detach(), temperature),
            )
        ((logp * coef) * mask).sum().backward()
        return logp.detach(), ent, hidden.grad.clone(), weight.grad.clone(), bias.grad.clone()

    full, chunked = run(False), run(True)
    valid = mask.bool()
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked[0][valid], full[0][valid], **tol)
    torch.testing.assert_close(chunked[1][valid], full[1][valid], **tol)
    assert torch.all(chunked[0][~valid] == 0) and torch.all(chunked[1][~valid] == 0)  # skipped tokens
    for got, want in zip(chunked[2:], full[2:]):
        torch.testing.assert_close(got, want, **tol)


class LargestVocabTensor(TorchDispatchMode):
    """Records the largest tensor (elements) created with a vocab-sized last dim."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t) and t.dim() >= 2 and t.size(-1) == self.vocab:
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_path_never_holds_the_batch_logits(tiny_model_dir, bundled_records):
    module = make_module(tiny_model_dir, logprob_chunk_size=4)
    rollout = rollout_of(module, bundled_records)
    V = module.policy.config.vocab_size
    n_tokens = rollout.completion_ids.numel()
    with LargestVocabTensor(V) as spy:
        loss_and_grads(module, rollout)
    # at most one chunk of logits (4 tokens x V), or the head's own weight-gradient (V, H) / embedding grad
    H = module.policy.config.hidden_size
    assert spy.largest <= max(4 * V, V * H) < n_tokens * V
    module.config.logprob_chunk_size = None  # the full-logits path holds (n, C, V)
    with LargestVocabTensor(V) as spy:
        loss_and_grads(module, rollout)
    assert spy.largest >= n_tokens * V


# ---------------------------------------------------------------------------------- the module
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("micro_batch_size", [None, 4], ids=["shared_prefix", "plain"])
def test_module_chunked_path_equals_full_logits_path(
    tiny_model_dir, bundled_records, monkeypatch, lora, micro_batch_size
):
    module = make_module(
        tiny_model_dir, lora=lora, temperature=0.8, micro_batch_size=micro_batch_size, logprob_chunk_size=5
    )
    rollout = rollout_of(module, bundled_records)
    assert split_lm_head(module.policy) is not None
    calls = {"shared": 0}
    original = shared_prefix.shared_prefix_completion_logits

    def counting(*args, **kwargs):
        calls["shared"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(shared_prefix, "shared_prefix_completion_logits", counting)
    valid = rollout.completion_mask.bool()

    def forbidden(*args, **kwargs):
        raise AssertionError("the chunked path computed full logits")

    module.config.logprob_chunk_size = None
    full = loss_and_grads(module, rollout)
    full_old = module.logps.of_rollout(module.policy, rollout)
    shared_calls_full = calls["shared"]
    module.config.logprob_chunk_size = 5
    monkeypatch.setattr(logprobs, "completion_logits", forbidden)
    chunked = loss_and_grads(module, rollout)
    chunked_old = module.logps.of_rollout(module.policy, rollout)

    assert (calls["shared"] > 0) is (micro_batch_size is None)  # G=3 rows; micro-batches of 4 split groups
    assert calls["shared"] == 2 * shared_calls_full
    assert chunked[0] == pytest.approx(full[0], rel=1e-5, abs=1e-6)  # loss
    assert chunked[1] == pytest.approx(full[1], rel=1e-5)  # entropy
    torch.testing.assert_close(chunked[2][valid], full[2][valid], atol=1e-5, rtol=1e-5)  # reference
    torch.testing.assert_close(chunked_old[valid], full_old[valid], atol=1e-5, rtol=1e-5)
    if lora:
        assert not torch.allclose(chunked[2][valid], chunked_old[valid], atol=1e-3)  # adapter off vs on
    assert chunked[3].keys() == full[3].keys() and full[3]
    for name, grad in full[3].items():
        torch.testing.assert_close(chunked[3][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_logps_use_the_sampling_temperature(tiny_model_dir, bundled_records):
    for chunk in (16, None):
        module = make_module(tiny_model_dir, temperature=0.7, logprob_chunk_size=chunk)
        rollout = rollout_of(module, bundled_records)
        valid = rollout.completion_mask.bool()
        with torch.no_grad():
            logits = module.policy(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits
            logits = logits[:, -C - 1 : -1].float()
            ids = rollout.completion_ids.unsqueeze(-1)
            tempered = torch.log_softmax(logits / 0.7, -1).gather(-1, ids).squeeze(-1)
            plain = torch.log_softmax(logits, -1).gather(-1, ids).squeeze(-1)
        policy = module.logps.of_rollout(module.policy, rollout)
        reference = module.reference_logps(rollout)  # the untrained reference = the policy here
        torch.testing.assert_close(policy[valid], tempered[valid], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reference[valid], tempered[valid], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(policy[valid], plain[valid], atol=1e-3)
        assert module.logps.temperature() == 0.7


# ---------------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_same_loss_and_grads(tiny_model_dir, bundled_records, lora):
    plain = make_module(tiny_model_dir, lora=lora, logprob_chunk_size=5)
    ckpt = make_module(tiny_model_dir, lora=lora, logprob_chunk_size=5, gradient_checkpointing=True)
    assert not checkpointing_active(plain.policy) and checkpointing_active(ckpt.policy)
    rollout = rollout_of(plain, bundled_records)
    # layer 0's MLP runs again in the backward only when its activations were checkpointed
    recomputed = {"n": 0, "backward": False}

    def hook(*_):
        recomputed["n"] += recomputed["backward"]

    for m in (plain, ckpt):
        base = m.policy.get_base_model() if lora else m.policy
        base.model.layers[0].mlp.register_forward_hook(hook)
    a = loss_and_grads(plain, rollout)
    recomputed["backward"] = True  # the counter runs from here: ckpt's reference and policy forwards...
    before = recomputed["n"]
    b = loss_and_grads(ckpt, rollout)
    assert recomputed["n"] - before >= 1  # ...and its backward, which replays the layer
    assert b[0] == pytest.approx(a[0], abs=1e-5)
    torch.testing.assert_close(b[2], a[2], atol=1e-5, rtol=1e-5)
    assert a[3].keys() == b[3].keys() and a[3]
    for name, grad in a[3].items():
        torch.testing.assert_close(b[3][name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_training_steps_with_checkpointing_lora_and_temperature(tiny_model_dir):
    module = make_module(
        tiny_model_dir, lora=True, temperature=0.7, gradient_checkpointing=True, num_iterations=2
    )
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    trainer = fit(module, steps=2)  # the GRPO module tests' quiet 1-device fit
    assert trainer.global_step == 2
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["loss"]) and float(metrics["entropy"]) > 0
    moved = [
        n for n, p in module.policy.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert moved


def test_bad_logprob_options_exit_2_before_any_model_loads(tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [
            sys.executable, "train.py", "+experiment=smoke", "algorithm.logprob_chunk_size=0",
            f"run_dir={tmp_path / 'run'}", f"model.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=repo, capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "algorithm.logprob_chunk_size: got 0" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()  # stopped before the tiny model was built
