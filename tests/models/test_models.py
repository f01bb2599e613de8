"""The one loading path, tiny models, and the two forms of the frozen reference."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from quark_lightning.models.loading import ModelLoadError, apply_lora, load_causal_lm
from quark_lightning.models.reference import DisabledAdapterReference, FrozenCopyReference, build_reference
from quark_lightning.models.tiny import ensure_tiny_model


def _inputs(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Is my blood pressure high?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    enc = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_tiny_model_is_saved_and_loaded_through_the_hf_path(tiny_model_dir, tiny_model):
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tiny_model_dir))
    assert tiny_model.model.config.model_type == "llama"
    assert tiny_model.tokenizer.chat_template and tiny_model.tokenizer.pad_token_id is not None
    text = "Blood pressure above 140/90 mmHg is high."
    ids = tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_model.tokenizer.decode(ids) == text  # byte-level BPE round-trips


def test_tiny_model_build_is_cached(tiny_model_dir, bundled_records):
    from quark_lightning.cli.run import corpus_texts

    again = ensure_tiny_model(
        corpus_texts(bundled_records),
        cache_dir=os.path.dirname(tiny_model_dir),
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    assert again == tiny_model_dir


def test_missing_model_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1 is set"):
        load_causal_lm("someone/not-a-local-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="does not hold a loadable"):
        load_causal_lm(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="model.dtype"):
        load_causal_lm(str(tmp_path / "empty"), dtype="float8")


def test_frozen_copy_reference_is_frozen_and_stays_in_eval(tiny_model):
    policy = tiny_model.model
    ref = build_reference(policy)
    assert isinstance(ref, FrozenCopyReference)
    ref.train()
    assert not ref.frozen.module.training
    assert all(not p.requires_grad for p in ref.parameters())
    inputs = _inputs(tiny_model.tokenizer)
    torch.testing.assert_close(ref(policy, **inputs), policy(**inputs).logits, rtol=0, atol=0)


def test_disabled_adapter_reference_gives_the_base_logits_exactly(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    loaded = load_causal_lm(tiny_model_dir)
    policy = apply_lora(loaded.model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    with torch.no_grad():  # a trained adapter: make the LoRA update non-zero
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    ref = build_reference(policy)
    assert isinstance(ref, DisabledAdapterReference)
    assert sum(p.numel() for p in ref.parameters()) == 0  # no second copy in memory
    inputs = _inputs(loaded.tokenizer)
    with torch.no_grad():
        base_logits = base(**inputs).logits
        policy_logits = policy(**inputs).logits
    assert not torch.allclose(policy_logits, base_logits)  # the adapter is active in the policy
    torch.testing.assert_close(ref(policy, **inputs), base_logits, rtol=0, atol=0)
    policy.train()
    ref(policy, **inputs)
    assert policy.training  # the reference forward restores the policy's mode


def test_rl_from_an_sft_adapter_uses_the_sft_policy_as_reference(tiny_model_dir, tmp_path):
    """The reference after an SFT adapter gives the SFT policy's logits, not the base model's."""
    from peft import AutoPeftModelForCausalLM

    from quark_lightning.models.loading import merge_sft_adapter

    sft = apply_lora(
        load_causal_lm(tiny_model_dir).model, r=4, alpha=8, dropout=0.0, target_modules="all-linear"
    )
    with torch.no_grad():  # a trained SFT adapter
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    sft.save_pretrained(tmp_path / "sft-adapter")

    loaded = load_causal_lm(tiny_model_dir)
    inputs = _inputs(loaded.tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    sft_policy = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "sft-adapter").eval()
    policy = apply_lora(
        merge_sft_adapter(loaded.model, str(tmp_path / "sft-adapter")),
        r=4,
        alpha=8,
        dropout=0.0,
        target_modules="all-linear",
    )  # a fresh RL adapter on top
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # RL has moved the policy away from the SFT policy
        sft_logits, base_logits = sft_policy(**inputs).logits, base(**inputs).logits
    ref_logits = build_reference(policy)(policy, **inputs)
    torch.testing.assert_close(ref_logits, sft_logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ref_logits, base_logits, atol=1e-3)
    with pytest.raises(ModelLoadError, match="LoRA adapter"):
        merge_sft_adapter(load_causal_lm(tiny_model_dir).model, str(tmp_path / "missing"))
