"""The `rollout` group (conf/rollout/*.yaml) as typed settings, one dataclass per engine.

Every engine takes the sampling keys of `SamplingSettings`; each adds its own. An engine class names its
settings in `SETTINGS`, so the config check (config/groups.py: unknown keys; config/validate.py: values)
and the engine's constructor apply the same rules, declared once here (config/typed.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quark_lightning.config.typed import boolean, integer, is_int, number, one_of, optional, setting

PRECISIONS = ("fp32", "bf16", "int8", "w8", "auto")  # the CPU rollout copy's formats (rollout/low_precision.py)
DECODE_MODES = ("fast", "generate")


def token_ids(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(is_int(i) and i >= 0 for i in value)


def stop_strings(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(t, str) and t for t in value)


@dataclass(frozen=True)
class SamplingSettings:
    """What every engine samples with (the names and meaning of transformers' generation config)."""

    max_new_tokens: int = setting(64, integer(1), "an integer >= 1")
    temperature: float = setting(1.0, number(0, low_open=True), "a number > 0")
    top_p: float = setting(1.0, number(0, 1, low_open=True), "a number in (0, 1]")
    top_k: int | None = setting(0, optional(integer(0)), "an integer >= 0 (0 or null = off)")
    min_p: float | None = setting(None, optional(number(0, 1)), "null or a number in [0, 1]")
    repetition_penalty: float | None = setting(1.0, optional(number(0, low_open=True)), "a number > 0 (null = 1)")
    # tokens; a longer prompt keeps its end. null: the tokenizer's model_max_length
    max_prompt_length: int | None = setting(256, optional(integer(1)), "null or an integer >= 1")
    # a completion also ends at any of these token ids, or with the token that completes a stop string
    eos_token_ids: Sequence[int] = setting((), token_ids, "a list of token ids (integers >= 0)")
    stop_strings: Sequence[str] = setting(
        (), stop_strings, "a list of non-empty strings", "e.g. rollout.stop_strings='[\"</answer>\"]'"
    )


@dataclass(frozen=True)
class HFRolloutSettings(SamplingSettings):
    """rollout=hf (rollout/hf_generate.py)."""

    decode: str = setting("fast", one_of(DECODE_MODES), f"one of {DECODE_MODES}")
    share_prefill: bool = setting(True, boolean, "true or false")  # one prefill per prompt for its G rows
    # the fast loop reads EOS back every k steps (null: every step on CPU, every 8 on an accelerator)
    sync_every: int | None = setting(None, optional(integer(1)), "null or an integer >= 1")
    prepack_weights: bool = setting(False, boolean, "true or false")  # CPU fp32: MKL-packed weight copies
    precision: str = setting("fp32", one_of(PRECISIONS), f"one of {PRECISIONS}")  # the sampling copy's format


@dataclass(frozen=True)
class VLLMRolloutSettings(SamplingSettings):
    """rollout=vllm (rollout/vllm_engine.py)."""

    max_prompt_length: int = setting(256, integer(1), "an integer >= 1 (vLLM sizes its context from it)")
    gpu_memory_utilization: float = setting(0.3, number(0, 1, low_open=True), "a number in (0, 1]")
    tensor_parallel_size: int = setting(1, integer(1), "an integer >= 1")
    dtype: str = setting("auto", lambda v: isinstance(v, str) and bool(v), "auto, bfloat16, float16 or float32")
    enforce_eager: bool = setting(False, boolean, "true or false")
    seed: int = setting(0, integer(), "an integer")
