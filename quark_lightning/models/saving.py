"""Writing the final policy as a directory that reproduces it (`save_policy`), LoRA or full."""

from __future__ import annotations

import os
from typing import Any


def base_state_dict(peft_state: dict[str, Any]) -> dict[str, Any]:
    """A LoRA policy's (PeftModel) state dict -> that of the model under the adapter, adapter left out.

    `base_model.model.<name>` -> `<name>`, `<layer>.base_layer.<p>` -> `<layer>.<p>`; the `lora_*` weights
    and the trained `modules_to_save` copies belong to the adapter (the base keeps `original_module`).
    """
    out = {}
    for key, value in peft_state.items():
        parts = key.removeprefix("base_model.model.").split(".")
        if any(p.startswith("lora_") or p == "modules_to_save" for p in parts):
            continue
        out[".".join(p for p in parts if p not in ("base_layer", "original_module"))] = value
    return out


def save_policy(
    policy, tokenizer, policy_dir: str, state_dict: dict[str, Any] | None = None, save_base: bool = False
) -> str:
    """Write the final policy to `policy_dir` so that loading it gives the trained policy. -> policy_dir

    Full fine-tuning: a plain HF model directory (`AutoModelForCausalLM.from_pretrained(policy_dir)`).

    LoRA: `policy_dir` is the RL adapter (adapter_config.json, adapter_model.safetensors, the tokenizer),
    as LoRA users and the pipeline expect (its grpo stage recognises an adapter by
    policy/adapter_config.json, and its export copies it to adapter/ and merges it into merged/). The
    adapter sits on the policy RL *started* from. When that start is not the model that was loaded (a
    warm start, or `model.adapter_path` merged in: `save_base`), the start policy is written, unmerged
    with the RL adapter, to `policy_dir/base/` (a full HF model and tokenizer; also the frozen reference,
    i.e. the adapter disabled) and the adapter's `base_model_name_or_path` is set to its absolute path.
    Without that, the adapter would point at the original base and loading it would silently drop the SFT
    weights. `AutoModelForCausalLM.from_pretrained(policy_dir)` (transformers' peft integration) and
    `AutoPeftModelForCausalLM.from_pretrained(policy_dir)` then both give the trained policy, and
    `policy_dir/base` alone gives the start / reference policy. Moving the directory: re-point
    `base_model_name_or_path` at the moved `base/` (absolute, as peft resolves it from the working dir).
    Otherwise (no SFT start) the adapter keeps pointing at the original base, which is its start.

    `state_dict`: the full (unsharded, rank-0) state dict of a sharded policy, from
    `distributed.full_state_dict` under FSDP2; both the adapter and the base are taken from it, so no
    sharded parameter is read here. None: the module's own state dict.
    """
    from peft import PeftModel

    swaps: list[tuple[Any, str, str]] = []  # (object, attribute, value while the adapter is saved)
    if isinstance(policy, PeftModel) and save_base:
        base_dir = os.path.abspath(os.path.join(policy_dir, "base"))
        full = state_dict if state_dict is not None else policy.state_dict()
        policy.get_base_model().save_pretrained(base_dir, state_dict=base_state_dict(full))
        tokenizer.save_pretrained(base_dir)
        # adapter_config.json's base_model_name_or_path, and the model card's base_model (from the config)
        swaps = [(c, "base_model_name_or_path", base_dir) for c in policy.peft_config.values()]
        swaps.append((policy.get_base_model().config, "_name_or_path", base_dir))
    originals = [getattr(obj, attr) for obj, attr, _ in swaps]
    try:
        for obj, attr, value in swaps:
            setattr(obj, attr, value)
        policy.save_pretrained(policy_dir, state_dict=state_dict)  # a PeftModel writes only the adapter
    finally:  # the in-memory policy keeps its own names
        for (obj, attr, _), original in zip(swaps, originals):
            setattr(obj, attr, original)
    tokenizer.save_pretrained(policy_dir)
    return policy_dir
