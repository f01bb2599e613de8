"""Completion logits with each prompt computed once for its G completions (policy and reference passes).

A rollout's rows come in groups: rows g*G .. g*G+G-1 are G completions of one prompt. A plain forward
over the concatenated (N, P + C) sequences runs every prompt token G times. Here:

    prompt pass      (B, P) prompts, KV cache on          -> cache (B, ...), logits of the last prompt token
    expand           cache.batch_repeat_interleave(G)      -> cache (N, ...)   (differentiable: the G copies'
                                                              gradients add up in the prompt activations)
    completion pass  (N, C) completion tokens on the cache -> logits (N, C, V)

so the prompt tokens are computed B times instead of N = B * G times, in the forward and the backward.
Interpretation: the result equals the plain forward's completion logits up to float rounding (same
positions, same masks, causal attention); tests compare both. The plain forward is used when the rows are
not grouped that way (a micro-batch that splits a group), when G is 1, or when the model call cannot
return its cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers

# transformers 5 renamed the forward's `past_key_values` argument (and output field) to `cache`
CACHE_KWARG = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` assigns them.  (N, L) -> (N, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def rows_grouped(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int) -> bool:
    """True when rows g*G .. g*G+G-1 hold the same prompt for every g.  (N, P) -> bool"""
    n = prompt_ids.size(0)
    if group_size <= 1 or n % group_size:
        return False
    firsts = prompt_ids[::group_size].repeat_interleave(group_size, dim=0)
    first_masks = prompt_mask[::group_size].repeat_interleave(group_size, dim=0)
    return torch.equal(firsts, prompt_ids) and torch.equal(first_masks, prompt_mask)


def plain_completion_logits(
    model_call: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int
) -> torch.Tensor:
    """One forward over prompt + completion.  (n, P + C) -> (n, C, V)"""
    out = model_call(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=completion_len + 1,  # no LM head on the prompt positions
    )
    logits = out if torch.is_tensor(out) else out.logits
    return logits[:, -completion_len - 1 : -1]  # (n, C, V): position t predicts completion token t


def shared_prefix_completion_logits(
    model_call: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int, G: int
) -> torch.Tensor:
    """The prompt runs once per group of G rows; the completions run on its repeated KV cache.

    input_ids, attention_mask (n, P + C) with n a multiple of G and rows grouped -> logits (n, C, V).
    """
    P = input_ids.size(1) - completion_len
    prompt_mask = attention_mask[::G, :P]  # (b, P)
    prompt_pos = position_ids_from_mask(prompt_mask)  # (b, P)
    out = model_call(
        input_ids=input_ids[::G, :P],
        attention_mask=prompt_mask,
        position_ids=prompt_pos,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out[CACHE_KWARG] if CACHE_KWARG in out else out[1]
    cache.batch_repeat_interleave(G)  # (b, ...) -> (n, ...)
    first = out.logits[:, -1:].repeat_interleave(G, dim=0)  # (n, 1, V) predicts completion token 0
    if completion_len == 1:
        return first
    # completion tokens 0 .. C-2 predict tokens 1 .. C-1 (the last token's own output is not needed)
    steps = torch.arange(1, completion_len, device=input_ids.device)  # (C - 1,)
    completion_pos = prompt_pos[:, -1:].repeat_interleave(G, dim=0) + steps  # (n, C - 1)
    rest = model_call(
        input_ids=input_ids[:, P:-1],  # (n, C - 1)
        attention_mask=attention_mask[:, :-1],  # (n, P + C - 1): the cached prompt plus the completion
        position_ids=completion_pos,
        use_cache=True,
        **{CACHE_KWARG: cache},
    ).logits  # (n, C - 1, V)
    return torch.cat([first, rest], dim=1)  # (n, C, V)


def completion_logits(
    model_call: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    group_size: int = 1,
) -> torch.Tensor:
    """Logits that predict each completion token, sharing the prompt pass where the rows allow it."""
    P = input_ids.size(1) - completion_len
    if rows_grouped(input_ids[:, :P], attention_mask[:, :P], group_size):
        return shared_prefix_completion_logits(
            model_call, input_ids, attention_mask, completion_len, group_size
        )
    return plain_completion_logits(model_call, input_ids, attention_mask, completion_len)
