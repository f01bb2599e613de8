"""Prompts longer than `max_prompt_length` keep their END (the latest turn and the generation header)."""

from __future__ import annotations

import pytest
import torch

from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.rollout.engine import render_prompts
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.scorers.format import FormatScorer
from tests.grpo.test_grpo_module import fit

MAX_PROMPT = 48
LATEST = "What dose of ibuprofen is safe?"


def long_and_short_prompts() -> list[dict]:
    long_history = " ".join(f"symptom{i} started on day {i} with fever" for i in range(60))
    long = {
        "id": "long",
        "messages": [
            {"role": "user", "content": long_history},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": LATEST},
        ],
    }
    short = {"id": "short", "messages": [{"role": "user", "content": "Headache?"}]}
    return [long, short]


def full_ids(tok, prompt: dict) -> list[int]:
    return tok(render_prompts(tok, [prompt])[0], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("decode", ["fast", "generate"])
def test_long_prompt_keeps_its_end_and_is_counted(tiny_model, decode):
    model, tok = tiny_model.model, tiny_model.tokenizer
    prompts = long_and_short_prompts()
    long_ids, short_ids = full_ids(tok, prompts[0]), full_ids(tok, prompts[1])
    assert len(long_ids) > 10 * MAX_PROMPT and len(short_ids) < MAX_PROMPT
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]

    engine = HFGenerateEngine(max_new_tokens=4, max_prompt_length=MAX_PROMPT, decode=decode)
    G = 2
    r = engine.generate(model, tok, prompts, G, greedy=True)

    assert r.prompt_ids.shape == (2 * G, MAX_PROMPT)
    kept_long = r.prompt_ids[0][r.prompt_mask[0].bool()].tolist()
    assert kept_long == long_ids[-MAX_PROMPT:]  # left truncation: the last MAX_PROMPT tokens
    assert kept_long[-len(header) :] == header  # ends with the generation header
    assert tok.decode(kept_long).find(LATEST) >= 0  # and holds the latest user turn
    kept_short = r.prompt_ids[G][r.prompt_mask[G].bool()].tolist()
    assert kept_short == short_ids  # a short prompt is untouched
    assert r.prompt_mask[G, : MAX_PROMPT - len(short_ids)].sum() == 0  # still left-padded
    assert r.prompt_truncated.dtype == torch.bool
    assert r.prompt_truncated.tolist() == [True] * G + [False] * G


def test_no_truncation_without_long_prompts(tiny_model, bundled_records):
    enc = HFGenerateEngine(max_prompt_length=4096).encode_prompts(
        tiny_model.tokenizer, bundled_records[:4], "cpu"
    )
    assert not enc["prompt_truncated"].any()
    ref = tiny_model.tokenizer(
        render_prompts(tiny_model.tokenizer, bundled_records[:4]),
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    assert torch.equal(enc["input_ids"], ref["input_ids"])
    assert torch.equal(enc["attention_mask"], ref["attention_mask"])


@pytest.mark.parametrize(("max_prompt_length", "ratio"), [(8, 1.0), (4096, 0.0)])
def test_grpo_logs_truncated_prompt_ratio(tiny_model_dir, max_prompt_length, ratio):
    torch.manual_seed(0)
    loaded = load_causal_lm(tiny_model_dir)
    matrix = AlignmentMatrix([Dimension("format_rules", "format", FormatScorer(min_words=3, max_words=40))])
    module = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        matrix,
        GRPOConfig(num_generations=2, beta=0.0, lr=1e-3),
        HFGenerateEngine(max_new_tokens=4, max_prompt_length=max_prompt_length),
    )
    trainer = fit(module, steps=1)  # the GRPO module tests' quiet 1-device fit
    assert float(trainer.callback_metrics["prompts/truncated_ratio"]) == pytest.approx(ratio)
