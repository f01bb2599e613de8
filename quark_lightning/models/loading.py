"""The one loading path: `AutoModelForCausalLM` / `AutoTokenizer` `.from_pretrained(name_or_path)`.

Works for any hub name (users with network) or local directory saved with `save_pretrained` (tests,
CI, the offline demo). `trust_remote_code` stays off unless the config turns it on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from quark_lightning.errors import QuarkError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(QuarkError, RuntimeError):
    """A model or tokenizer could not be loaded; the message says why and how to fix it."""


def explain_load_error(name_or_path: str, err: Exception, what: str = "model") -> ModelLoadError:
    if name_or_path.startswith(("/", "./", "../", "~")) and not os.path.exists(
        os.path.expanduser(name_or_path)
    ):
        hint = f"no such directory; pass the directory a {what} was saved to with save_pretrained"
    elif os.path.isdir(name_or_path):
        hint = (
            f"the directory exists but does not hold a loadable {what}: it needs config.json, the weights "
            "(model.safetensors or pytorch_model.bin) and the tokenizer files, as written by save_pretrained"
        )
    elif os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        hint = (
            "HF_HUB_OFFLINE=1 is set and this is not a local directory: pass a local path saved with "
            "save_pretrained (model.name_or_path=/path/to/dir), or use model=tiny"
        )
    else:
        hint = "check the hub name or path (model.name_or_path) and your network access"
    return ModelLoadError(f"could not load {what} {name_or_path!r}: {hint}. ({type(err).__name__}: {err})")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise explain_load_error(name_or_path, err, "tokenizer") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"tokenizer of {name_or_path!r} has no chat template; use an instruction-tuned model or set "
            "tokenizer.chat_template in its tokenizer_config.json"
        )
    tokenizer.padding_side = "left"  # generation pads prompts on the left
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    if dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype: got {dtype!r}, expected one of {sorted(DTYPES)}")
    if not isinstance(trust_remote_code, bool):  # "false" (a string) must not switch it on
        raise ModelLoadError(f"model.trust_remote_code: got {trust_remote_code!r}, expected true or false")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise explain_load_error(name_or_path, err) from err
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer)


def apply_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: list[str] | str):
    """Wrap the model with a fresh LoRA adapter (peft); only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def merge_sft_adapter(model: PreTrainedModel, adapter_path: str) -> PreTrainedModel:
    """Fold a trained (SFT) LoRA adapter into the base weights, so the SFT policy is the new base.

    Interpretation of "when RL starts from an SFT adapter the reference is the SFT policy": we merge the
    adapter first. The frozen reference (a frozen copy, or the RL adapter disabled) is then the SFT
    policy, never the bare base model, and no second adapter has to be kept in sync.
    """
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    except (OSError, ValueError) as err:
        raise explain_load_error(adapter_path, err, "LoRA adapter") from err
    return merged
