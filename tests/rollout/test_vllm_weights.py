"""The weights rollout=vllm copies into vLLM, computed on CPU without vLLM (the engine itself never ran).

`merged_policy_weights` must give, under the base model's parameter names, exactly the weights the
policy computes with: for a LoRA policy `base + scaling * B @ A` (compared with PEFT's own
`merge_and_unload` of a copy), the base weights while the adapter is disabled (the reference's forward),
and it must never modify the policy (an in-place merge/unmerge would drift the frozen base weights, which
with LoRA are the reference policy).
"""

from __future__ import annotations

import copy

import torch

from quark_lightning.models.loading import apply_lora, load_causal_lm
from quark_lightning.rollout.policy_weights import merged_policy_weights


def clean(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def lora_policy(model_dir):
    torch.manual_seed(0)
    policy = apply_lora(
        load_causal_lm(model_dir).model, r=4, alpha=8, dropout=0.0, target_modules="all-linear"
    )
    with torch.no_grad():  # a trained adapter: B is zero at initialization, which would hide the merge
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return policy


def test_full_model_weights_pass_through_unchanged(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir).model
    got = dict(merged_policy_weights(model))
    assert got.keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        assert torch.equal(got[name], p)


def test_lora_weights_are_the_merged_model_and_the_policy_is_untouched(tiny_model_dir):
    policy = lora_policy(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    got = dict(merged_policy_weights(policy))

    merged = copy.deepcopy(policy).merge_and_unload()
    want = dict(merged.named_parameters())
    assert got.keys() == want.keys()  # base names: no lora_, no base_model.model., no .base_layer
    base_before = {clean(n): p for n, p in before.items() if "lora_" not in n}
    changed = 0
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=1e-5, msg=name)
        changed += int(not torch.equal(value, base_before[name]))
    assert changed > 0  # the adapter did change weights (else the comparison shows nothing)
    for name, p in policy.named_parameters():
        assert torch.equal(p, before[name]), f"{name} was modified"

    with policy.disable_adapter():  # the reference's forward: vLLM would get the bare base weights
        base = dict(merged_policy_weights(policy))
    for name, p in policy.named_parameters():
        if "lora_" not in name:
            assert torch.equal(base[clean(name)], p.detach()), name


def test_fsdp1_shards_and_zero3_partitions_are_refused_with_the_fix(tiny_model_dir):
    """FSDP1 (trainer=fsdp) holds flat shards and ZeRO-3 partitions; reading them parameter by parameter
    would copy shards into the rollout engine. FSDP1 runs here for real (one process, gloo, CPU)."""
    import pytest
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = load_causal_lm(tiny_model_dir).model
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = FSDP(copy.deepcopy(model), device_id=torch.device("cpu"), use_orig_params=True)
        with pytest.raises(NotImplementedError, match=r"FSDP1 shards \(trainer=fsdp\).*Fix: trainer=fsdp2"):
            list(merged_policy_weights(wrapped))
    finally:
        dist.destroy_process_group()
    next(model.parameters()).ds_id = 0  # what DeepSpeed ZeRO-3 puts on each partitioned parameter
    with pytest.raises(NotImplementedError, match="ZeRO-3 partitions.*Fix: trainer=fsdp2"):
        list(merged_policy_weights(model))
