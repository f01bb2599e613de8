"""The frozen reference policy, in the two forms docs/design.md section 4 fixes.

- Full fine-tuning: a frozen deep copy of the starting policy (`FrozenCopyReference`).
- LoRA on a base model: the same network with the adapter disabled (`DisabledAdapterReference`), so no
  second copy sits in memory.

Both compute per-token log-probs under `torch.no_grad()` in eval mode, are never in the optimizer, and
ignore Lightning's `.train()` calls (a frozen module must not switch dropout back on).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn


class FrozenModule(nn.Module):
    """Holds a module frozen: no grads, always eval mode whatever `.train()` is called with."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenModule:  # noqa: ARG002 - frozen stays eval
        super().train(False)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@contextmanager
def eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class FrozenCopyReference(nn.Module):
    kind = "frozen_copy"

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.frozen = FrozenModule(copy.deepcopy(policy))

    @torch.no_grad()
    def forward(self, policy: nn.Module, **inputs) -> torch.Tensor:
        return self.outputs(policy, **inputs).logits

    @torch.no_grad()
    def outputs(self, policy: nn.Module, **inputs):  # noqa: ARG002
        """The frozen model's whole output (logits and, with `use_cache`, the KV cache)."""
        return self.frozen(**inputs)


class DisabledAdapterReference(nn.Module):
    """The policy itself with its LoRA adapter disabled. Holds no parameters of its own."""

    kind = "disabled_adapter"

    @torch.no_grad()
    def forward(self, policy: nn.Module, **inputs) -> torch.Tensor:
        return self.outputs(policy, **inputs).logits

    @torch.no_grad()
    def outputs(self, policy: nn.Module, **inputs):
        """The base model's whole output (logits and, with `use_cache`, the KV cache)."""
        with policy.disable_adapter(), eval_mode(policy):
            return policy(**inputs)


def build_reference(policy: nn.Module) -> nn.Module:
    from peft import PeftModel

    if isinstance(policy, PeftModel):
        return DisabledAdapterReference()
    return FrozenCopyReference(policy)
