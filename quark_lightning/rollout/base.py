"""The rollout-engine interface: prompts -> G sampled completions each, as a `Rollout`.

GRPOModule, the RFN calibration and the closed-loop evaluation call only `generate`, so any engine that
implements it plugs in through `rollout=NAME` (conf/rollout/): `hf` (Hugging Face generate, CPU and GPU,
rollout/hf_generate.py) or `vllm` (vLLM, GPU, optional extra, rollout/vllm_engine.py).

Contract of `generate(policy, tokenizer, prompts, num_generations, greedy=False) -> Rollout`:
- the G completions of a prompt are contiguous rows (prompt i owns rows i*G .. i*G+G-1);
- `prompt_ids`/`prompt_mask` are left-padded, `completion_ids` right-padded with the pad token;
- `completion_mask` is 1 up to and including the first EOS; `truncated` marks rows without an EOS;
- a prompt longer than the engine's `max_prompt_length` keeps its last tokens (left truncation, as TRL:
  the generation header and the latest turn survive); `prompt_truncated` marks its rows;
- tensors are ordinary tensors (not inference tensors) on the policy's device, so they can enter autograd;
- the engine samples from the policy's current weights (an engine with its own copy syncs them first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (N, P) left-padded, N = num_prompts * G
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C) 1 up to and including the first EOS
    completions: list[str]  # (N,) decoded text without special tokens
    prompts: list[dict[str, Any]]  # (N,) the prompt object of each completion (repeated G times)
    truncated: torch.Tensor  # (N,) bool, no EOS within max_new_tokens
    prompt_truncated: torch.Tensor  # (N,) bool, the prompt was longer than max_prompt_length (left-cut)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # (N, P + C)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)  # (N, P + C)


@runtime_checkable
class RolloutEngine(Protocol):
    """What GRPOModule needs from a generation backend."""

    max_new_tokens: int

    def generate(
        self,
        policy: torch.nn.Module,
        tokenizer: Any,
        prompts: Sequence[dict[str, Any]],
        num_generations: int,
        greedy: bool = False,
    ) -> Rollout: ...


def render_prompts(tokenizer, prompts: Sequence[dict[str, Any]]) -> list[str]:
    """Each prompt's chat messages through the tokenizer's chat template, ready for the answer."""
    return [
        tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def completion_mask_from_ids(
    completion_ids: torch.Tensor, eos_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (N, C) that is 1 up to and including the first EOS; and whether each row has no EOS."""
    is_eos = completion_ids == eos_token_id  # (N, C)
    has_eos = is_eos.any(dim=1)
    first = torch.where(
        has_eos,
        is_eos.int().argmax(dim=1),
        torch.full_like(has_eos, completion_ids.size(1), dtype=torch.long),
    )
    positions = torch.arange(completion_ids.size(1), device=completion_ids.device).unsqueeze(0)  # (1, C)
    mask = (positions <= first.unsqueeze(1)).long()
    return mask, ~has_eos
