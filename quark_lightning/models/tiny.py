"""Tiny models built in code, saved with `save_pretrained`, and loaded back through the real path.

`ensure_tiny_model(...)` trains a byte-level BPE tokenizer (with a ChatML-style chat template) on the
bundled medical text, builds a small Llama-architecture causal LM from a config, and saves both under
`cache_dir/<key>`, where the key hashes the architecture and the training text. A second call finds the
directory and returns it. Callers then load it with `load_causal_lm(path)`, exactly as a hub model.

The weights are the same bits on every processor (`grid_init_`): transformers' default init draws with
`normal_`, whose vectorized kernel (AVX2 / AVX-512 / scalar) rounds differently, so the "same" seed gave
weights 1e-8 apart on two x86 machines, and every golden number downstream moved with them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

INIT_GRID = 2**15  # grid_init_: integers in [-INIT_GRID, INIT_GRID]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


def default_cache_dir() -> str:
    return os.environ.get("QUARK_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "quark_lightning"))


def build_tokenizer(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _key(arch: dict, texts: list[str]) -> str:
    h = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
    return h.hexdigest()[:12]


def grid_init_(model: torch.nn.Module, seed: int, std: float) -> None:
    """Re-draw every matrix (ndim >= 2) uniform with standard deviation `std`, processor-independently.

    Each value is an integer n from `torch.randint` (integer arithmetic: exact) times the constant
    std * sqrt(3) / INIT_GRID (one IEEE multiply: exact rounding everywhere). Uniform on [-a, a] has
    std a / sqrt(3). Norm weights keep their init (ones). Tied weights are drawn once.
    """
    scale = std * 3**0.5 / INIT_GRID
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):  # sorted: the order does not depend on the class
            if param.dim() >= 2:
                n = torch.randint(-INIT_GRID, INIT_GRID + 1, tuple(param.shape), generator=generator)
                param.copy_(n.to(param.dtype) * scale)


def ensure_tiny_model(
    texts: Iterable[str],
    cache_dir: str | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    intermediate_size: int = 176,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> str:
    """Build (once) and save a tiny Llama model + tokenizer; return the directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = list(texts)
    arch = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        seed=seed,
        init="grid",  # grid_init_ (a model cached before it has another key)
    )
    out = Path(cache_dir or default_cache_dir()) / f"tiny-llama-{_key(arch, texts)}"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return str(out)
    tokenizer = build_tokenizer(texts, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    grid_init_(model, seed, config.initializer_range)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: concurrent builders (DDP ranks) never see half a directory
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return str(out)
