"""Rollout with Hugging Face `generate`.

`HFGenerateEngine.generate(policy, tokenizer, prompts, G)` renders each prompt with the tokenizer's chat
template, left-pads the batch, samples G completions per prompt in one `generate` call
(`num_return_sequences=G`, so the G completions of a prompt are contiguous), and returns token ids with
a completion mask that ends at (and includes) the first EOS. Runs under `torch.inference_mode` with the
KV cache on and the policy temporarily in eval mode (no dropout while sampling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from quark_lightning.models.reference import eval_mode


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (N, P) left-padded, N = num_prompts * G
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C) 1 up to and including the first EOS
    completions: list[str]  # (N,) decoded text without special tokens
    prompts: list[dict[str, Any]]  # (N,) the prompt object of each completion (repeated G times)
    truncated: torch.Tensor  # (N,) bool, no EOS within max_new_tokens

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # (N, P + C)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)  # (N, P + C)


def render_prompts(tokenizer, prompts: Sequence[dict[str, Any]]) -> list[str]:
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


class HFGenerateEngine:
    def __init__(
        self,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float | None = None,
        repetition_penalty: float = 1.0,
        max_prompt_length: int = 256,
    ):
        self.sampling = dict(
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
        )
        if min_p is not None:
            self.sampling["min_p"] = min_p
        self.max_new_tokens = max_new_tokens
        self.max_prompt_length = max_prompt_length

    def encode_prompts(self, tokenizer, prompts: Sequence[dict[str, Any]], device) -> dict[str, torch.Tensor]:
        tokenizer.padding_side = "left"
        enc = tokenizer(
            render_prompts(tokenizer, prompts),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_prompt_length,
            add_special_tokens=False,
        )
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    @torch.inference_mode()
    def _sample(self, policy, tokenizer, enc: dict[str, torch.Tensor], num_generations: int, greedy: bool):
        sampling = dict(self.sampling)
        if greedy:
            sampling.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            sampling.pop("min_p", None)
        with eval_mode(policy):
            out = policy.generate(
                **enc,
                **sampling,
                num_return_sequences=num_generations,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                use_cache=True,
            )
        return out

    def generate(
        self, policy, tokenizer, prompts: Sequence[dict[str, Any]], num_generations: int, greedy: bool = False
    ) -> Rollout:
        device = next(policy.parameters()).device
        enc = self.encode_prompts(tokenizer, prompts, device)
        # Tensors made under inference_mode cannot enter autograd; clone them out of it.
        out = self._sample(policy, tokenizer, enc, num_generations, greedy).clone()
        prompt_len = enc["input_ids"].size(1)
        completion_ids = out[:, prompt_len:]
        if completion_ids.size(1) == 0:  # every sequence stopped at once: keep one (EOS) column
            completion_ids = torch.full((out.size(0), 1), tokenizer.eos_token_id, device=device)
        mask, truncated = completion_mask_from_ids(completion_ids, tokenizer.eos_token_id)
        completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        repeat = lambda t: t.repeat_interleave(num_generations, dim=0)  # noqa: E731
        return Rollout(
            prompt_ids=repeat(enc["input_ids"]),
            prompt_mask=repeat(enc["attention_mask"]),
            completion_ids=completion_ids,
            completion_mask=mask,
            completions=[t.strip() for t in texts],
            prompts=[p for p in prompts for _ in range(num_generations)],
            truncated=truncated,
        )
