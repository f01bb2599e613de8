"""The `model` group (conf/model/*.yaml) as typed settings: the keys the built-in sources take, each rule
declared once (config/typed.py). config/validate.py checks a composed `model` node with them (unknown keys
with the nearest name, every wrong value at once); a source of your own (`model._target_` naming a class
that is not built in) is checked on the keys it shares with these and may take others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from quark_lightning.config.lora_settings import LoraSettings
from quark_lightning.config.typed import boolean, integer, one_of, optional, setting, subgroup
from quark_lightning.models.loading import DTYPES
from quark_lightning.models.weight_sources import MODEL_KINDS

KINDS = MODEL_KINDS  # the labels of the built-in sources
DTYPE_NAMES = tuple(sorted(DTYPES))


def text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def chat_template(value: Any) -> bool:
    """null, a Jinja template (it has {{ ... }} or {% ... %}), or the path of an existing file holding one."""
    if value is None:
        return True
    return isinstance(value, str) and (
        "{{" in value or "{%" in value or os.path.isfile(os.path.expanduser(value))
    )


@dataclass(frozen=True)
class TinySizes:
    """model.tiny: the sizes of the Llama model built in code (models/tiny.py)."""

    vocab_size: int = setting(1024, integer(8), "an integer >= 8")
    hidden_size: int = setting(64, integer(1), "an integer >= 1")
    intermediate_size: int = setting(176, integer(1), "an integer >= 1")
    num_hidden_layers: int = setting(2, integer(1), "an integer >= 1")
    num_attention_heads: int = setting(4, integer(1), "an integer >= 1")
    num_key_value_heads: int = setting(2, integer(1), "an integer >= 1")
    max_position_embeddings: int = setting(512, integer(1), "an integer >= 1")
    seed: int = setting(0, integer(), "an integer")


@dataclass(frozen=True)
class ModelSettings:
    kind: str | None = setting(
        None, optional(one_of(KINDS)), f"one of {list(KINDS)}", "use model=tiny, model=smollm2 or model=hf."
    )
    name_or_path: str | None = setting(None, optional(text), "a hub name or a local directory")
    gguf_file: str | None = setting(None, optional(text), "null or a .gguf file beside model.name_or_path")
    cache_dir: str | None = setting(None, optional(text), "a directory")
    dtype: str = setting("float32", one_of(DTYPE_NAMES), f"one of {list(DTYPE_NAMES)}")
    trust_remote_code: bool = setting(
        False,
        boolean,
        "true or false (a YAML boolean)",
        "pass model.trust_remote_code=false (turn it on only for model code you have read and trust).",
    )
    revision: str | None = setting(None, optional(text), "null or a hub revision (branch, tag or commit)")
    attn_implementation: str | None = setting(None, optional(text), "null or eager, sdpa, flash_attention_2")
    chat_template: str | None = setting(
        None,
        chat_template,
        "null, a Jinja chat template (with {{ ... }} / {% ... %}) or the path of an existing file holding one",
        "pass model.chat_template=/path/to/template.jinja (an existing file) or the template text itself.",
    )
    adapter_path: str | None = setting(None, optional(text), "null or the directory of an SFT LoRA adapter")
    lora: LoraSettings = subgroup(LoraSettings)  # a LoRA adapter for RL (peft)
    tiny: TinySizes = subgroup(TinySizes)  # model=tiny only
