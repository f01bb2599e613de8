"""The policy's current weights as another engine needs them: full tensors under the base model's names,
LoRA adapters merged out of place (the policy and its frozen base, the reference, are never modified).
Used by the vLLM engine's weight sync (rollout/vllm_engine.py) and the low-precision rollout copy
(rollout/low_precision.py)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2) gathered to the full tensor (a collective: every rank must call); else as is."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def lora_delta(layer: torch.nn.Module) -> torch.Tensor | None:
    """The active adapters' `scaling * B @ A` of one PEFT LoRA Linear layer, in the base weight's layout
    (None when the adapter is disabled, already merged into the base, or absent)."""
    if getattr(layer, "disable_adapters", False):
        return None  # the module computes the base model now: so does vLLM
    if getattr(layer, "lora_magnitude_vector", None):
        raise NotImplementedError("rollout=vllm: DoRA adapters are not merged for vLLM. Fix: use_dora=false")
    merged = set(getattr(layer, "merged_adapters", []))
    delta = None
    for name in layer.active_adapters:
        if name not in layer.lora_A or name in merged:
            continue
        a, b = _full(layer.lora_A[name].weight), _full(layer.lora_B[name].weight)
        d = (b.float() @ a.float()) * layer.scaling[name]
        d = d.T if getattr(layer, "fan_in_fan_out", False) else d
        delta = d if delta is None else delta + d
    return delta


SHARDED_REFUSED = (
    "rollout=vllm / rollout.precision other than fp32: the policy's weights are {how}, and the rollout "
    "copy reads them parameter by parameter, so it would get shards, not weights. Fix: trainer=fsdp2 (its "
    "DTensors are gathered) or trainer=ddp; or rollout=hf with rollout.precision=fp32, which samples from "
    "the training model itself"
)


def check_full_weights(policy: torch.nn.Module) -> None:
    """Refuse parameters this module cannot gather: FSDP1's flat shards (its wrappers insert
    `_fsdp_wrapped_module` into every name) and DeepSpeed ZeRO-3's partitions (`ds_id` on each parameter).
    FSDP2's DTensors and plain (DDP, single-device) tensors pass."""
    for name, param in policy.named_parameters():
        if "_fsdp_wrapped_module" in name:
            raise NotImplementedError(SHARDED_REFUSED.format(how="FSDP1 shards (trainer=fsdp)"))
        if hasattr(param, "ds_id"):
            raise NotImplementedError(
                SHARDED_REFUSED.format(how="DeepSpeed ZeRO-3 partitions (trainer=deepspeed with stage 3)")
            )


def merged_policy_weights(
    policy: torch.nn.Module, remove_duplicate: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) pairs under the base model's parameter names, the policy left untouched.

    A PEFT LoRA policy: each adapted Linear's weight is `base + scaling * B @ A`, computed out of place in
    fp32 and cast to the base weight's dtype; LoRA tensors are skipped and `base_model.model.` and
    `.base_layer` removed from the names. DTensors (FSDP2) are gathered: every rank must iterate. With
    `remove_duplicate=False` a tied weight comes once under each name. FSDP1 and ZeRO-3 shards are
    refused (`check_full_weights`).
    """
    check_full_weights(policy)
    lora_layers = {
        name: module
        for name, module in policy.named_modules()
        if hasattr(module, "lora_A") and hasattr(module, "base_layer")
    }
    for name, param in policy.named_parameters(remove_duplicate=remove_duplicate):
        if "lora_" in name or "modules_to_save" in name:
            continue
        tensor = _full(param)
        owner = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
        if owner in lora_layers and name.endswith(".base_layer.weight"):
            layer = lora_layers[owner]
            if not isinstance(layer.base_layer, torch.nn.Linear):
                raise NotImplementedError(
                    f"rollout=vllm: LoRA on {type(layer.base_layer).__name__} ({owner}) is not merged for "
                    "vLLM. Fix: target Linear modules only (model.lora.target_modules)"
                )
            delta = lora_delta(layer)
            if delta is not None:
                tensor = (tensor.float() + delta.to(tensor.device)).to(tensor.dtype)
        yield name.removeprefix("base_model.model.").replace(".base_layer", ""), tensor
