"""Rollout engines: the interface, the fast HF decode path against `generate`, the sampler, optional engines."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from quark_lightning.rollout.engine import Rollout, render_prompts, sample_next
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from tests.conftest import REPO, on_devices


def test_hf_engine_generate_keeps_the_rollout_contract(tiny_model, bundled_records):
    """What `generate` returns, field by field, against the contract in rollout/engine.py: G contiguous
    rows per prompt, left-padded prompts (the longer one left-truncated to max_prompt_length), completions
    masked up to and including the first EOS, `truncated` = no EOS, the decoded text, ordinary tensors.
    An EOS logit bias makes both endings certain: +1e4, every row ends with EOS as its first token (one
    column); -1e4, none does and every row is cut at max_new_tokens. (Rows of different lengths in one
    batch, right-padded: test_rows_that_stop_early_leave_the_batch_and_are_padded.)"""
    model, tok = tiny_model.model, tiny_model.tokenizer
    tokens = [tok(t, add_special_tokens=False)["input_ids"] for t in render_prompts(tok, bundled_records)]
    by_length = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    short, long = by_length[0], by_length[-1]
    limit = (len(tokens[long]) + len(tokens[short])) // 2  # cuts the long prompt only
    assert len(tokens[short]) <= limit < len(tokens[long])
    prompts = [bundled_records[long], bundled_records[short]]
    expected_prompt = [tokens[long][-limit:], tokens[short]]  # the long one keeps its last tokens
    G, max_new, N = 3, 10, 6
    engine = HFGenerateEngine(max_new_tokens=max_new, max_prompt_length=limit)
    assert engine.max_new_tokens == max_new
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
    device = next(model.parameters()).device
    for eos_bias, C in ((1e4, 1), (-1e4, max_new)):
        with torch.no_grad():
            model.lm_head.bias[tok.eos_token_id] = eos_bias
        r = engine.generate(model, tok, prompts, G)
        assert isinstance(r, Rollout)
        assert r.prompt_ids.shape == r.prompt_mask.shape == (N, limit)
        assert r.completion_ids.shape == r.completion_mask.shape == (N, C)
        assert r.truncated.dtype == r.prompt_truncated.dtype == torch.bool
        assert r.truncated.tolist() == [eos_bias < 0] * N
        assert r.prompt_truncated.tolist() == [True] * G + [False] * G
        assert len(r.completions) == len(r.prompts) == N
        assert [p["id"] for p in r.prompts] == [prompts[0]["id"]] * G + [prompts[1]["id"]] * G
        for t in (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, r.truncated):
            assert t.device == device and not t.is_inference()  # can enter autograd
        assert r.completion_mask.tolist() == [[1] * C] * N  # through the EOS, or all max_new tokens
        for i in range(N):
            n = int(r.prompt_mask[i].sum())
            assert r.prompt_mask[i].tolist() == [0] * (limit - n) + [1] * n  # left padding
            assert r.prompt_ids[i].tolist() == [tok.pad_token_id] * (limit - n) + expected_prompt[i // G]
            row = r.completion_ids[i].tolist()
            assert (row == [tok.eos_token_id]) if eos_bias > 0 else (tok.eos_token_id not in row)
            assert r.completions[i] == tok.decode(row, skip_special_tokens=True).strip()


@pytest.mark.parametrize("device", on_devices())
def test_fast_greedy_decode_equals_generate(tiny_model, bundled_records, device):
    model, tok = tiny_model.model.to(device), tiny_model.tokenizer
    fast = HFGenerateEngine(max_new_tokens=16, decode="fast").generate(
        model, tok, bundled_records[:3], 1, greedy=True
    )
    ref = HFGenerateEngine(max_new_tokens=16, decode="generate").generate(
        model, tok, bundled_records[:3], 1, greedy=True
    )
    assert fast.completion_ids.device.type == device
    assert torch.equal(fast.completion_ids, ref.completion_ids)
    assert torch.equal(fast.completion_mask, ref.completion_mask)


def test_rows_that_stop_early_leave_the_batch_and_are_padded(tiny_model, bundled_records):
    model, tok = tiny_model.model, tiny_model.tokenizer
    with torch.no_grad():  # make EOS likely so some rows stop early
        model.lm_head.weight[tok.eos_token_id] = 3.0 * model.model.norm.weight
    torch.manual_seed(0)
    for share in (True, False):
        r = HFGenerateEngine(max_new_tokens=12, share_prefill=share).generate(
            model, tok, bundled_records[:2], 4
        )
        lengths = r.completion_mask.sum(1)
        assert r.completion_ids.shape[0] == 8 and (lengths < 12).any()
        assert r.prompts[0] is r.prompts[3] and r.prompts[4]["id"] == bundled_records[1]["id"]
        for row, n in zip(r.completion_ids, lengths.tolist()):
            if n < r.completion_ids.size(1):
                assert row[n - 1] == tok.eos_token_id and (row[n:] == tok.pad_token_id).all()


def test_sampler_warpers():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0]])
    assert sample_next(logits, greedy=True).item() == 2
    assert all(sample_next(logits, top_k=1).item() == 2 for _ in range(20))
    assert all(sample_next(logits, top_p=0.01).item() == 2 for _ in range(20))
    torch.manual_seed(0)
    picks = {sample_next(logits, top_k=2).item() for _ in range(200)}
    assert picks == {2, 3}
    picks = {sample_next(logits, min_p=0.5).item() for _ in range(200)}  # p(3)/p(2) = e^-1 < 0.5
    assert picks == {2}


def test_repetition_penalty_uses_generate(tiny_model):
    assert not HFGenerateEngine(repetition_penalty=1.2).use_fast_path(tiny_model.model)
    assert HFGenerateEngine().use_fast_path(tiny_model.model)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_engine_says_how_to_install():
    from quark_lightning.rollout.vllm_engine import VLLMEngine

    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
        VLLMEngine()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed")
def test_deepspeed_config_fails_early_with_the_fix():
    from quark_lightning.infra.errors import ConfigError
    from quark_lightning.infra.strategies import build_strategy

    cfg = compose_trainer("deepspeed")
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[deepspeed\]'"):
        build_strategy(OmegaConf.to_container(cfg.trainer.strategy))


def compose_trainer(name: str):
    with initialize_config_dir(config_dir=f"{REPO}/conf", version_base=None):
        return compose(config_name="train", overrides=[f"trainer={name}"])


@pytest.mark.parametrize(
    ("name", "strategy_class"),
    [("ddp", None), ("fsdp2", "FSDP2Strategy"), ("fsdp", "FSDPStrategy"), ("multinode", None)],
)
def test_trainer_configs_build_their_strategy(name, strategy_class):
    from quark_lightning.infra.strategies import build_strategy

    cfg = compose_trainer(name)
    strategy = build_strategy(OmegaConf.to_container(cfg.trainer, resolve=True)["strategy"])
    if strategy_class is None:
        assert strategy == "ddp"
    else:
        assert type(strategy).__name__ == strategy_class
    if name == "multinode":
        assert cfg.trainer.num_nodes == 2
