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
return its cache (the caller passes G = 1 under gradient checkpointing, where HF layers drop the cache).

`completion_hidden_states` is the same forward on the model's backbone (`split_lm_head`): it returns the
final hidden states (n, C, H) of the positions that predict the completion tokens, without the LM head,
for `grpo_loss.chunked_selective_log_softmax`, which applies the head a chunk of tokens at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from torch import nn

from quark_lightning.infra.distributed import is_sharded
from quark_lightning.models.reference import eval_mode

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


# what a forward returns: "logits" (a causal LM: LM head applied on the kept positions) or "hidden" (its
# backbone: final hidden states, BaseModelOutputWithPast.last_hidden_state, of every position)
FEATURES = ("logits", "hidden")


def _features(out, features: str) -> torch.Tensor:
    if torch.is_tensor(out):
        return out
    return out.logits if features == "logits" else out.last_hidden_state


def plain_completion_logits(
    model_call: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    features: str = "logits",
) -> torch.Tensor:
    """One forward over prompt + completion.  (n, P + C) -> (n, C, V), or (n, C, H) for `hidden`."""
    kwargs = {"logits_to_keep": completion_len + 1} if features == "logits" else {}  # no head on the prompt
    out = model_call(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **kwargs,
    )
    return _features(out, features)[:, -completion_len - 1 : -1]  # position t predicts completion token t


def shared_prefix_completion_logits(
    model_call: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    G: int,
    features: str = "logits",
) -> torch.Tensor:
    """The prompt runs once per group of G rows; the completions run on its repeated KV cache.

    input_ids, attention_mask (n, P + C) with n a multiple of G and rows grouped -> logits (n, C, V), or
    final hidden states (n, C, H) for `features="hidden"`.
    """
    P = input_ids.size(1) - completion_len
    prompt_mask = attention_mask[::G, :P]  # (b, P)
    prompt_pos = position_ids_from_mask(prompt_mask)  # (b, P)
    out = model_call(
        input_ids=input_ids[::G, :P],
        attention_mask=prompt_mask,
        position_ids=prompt_pos,
        use_cache=True,
        **({"logits_to_keep": 1} if features == "logits" else {}),
    )
    cache = out[CACHE_KWARG] if CACHE_KWARG in out else out[1]
    cache.batch_repeat_interleave(G)  # (b, ...) -> (n, ...)
    first = _features(out, features)[:, -1:].repeat_interleave(G, dim=0)  # (n, 1, .) predicts token 0
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
    )
    return torch.cat([first, _features(rest, features)], dim=1)  # (n, C, .)


def completion_logits(
    model_call: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    group_size: int = 1,
    features: str = "logits",
) -> torch.Tensor:
    """Logits that predict each completion token, sharing the prompt pass where the rows allow it."""
    if features not in FEATURES:
        raise ValueError(f"features: {features!r} is not one of {FEATURES}")
    P = input_ids.size(1) - completion_len
    if rows_grouped(input_ids[:, :P], attention_mask[:, :P], group_size):
        return shared_prefix_completion_logits(
            model_call, input_ids, attention_mask, completion_len, group_size, features
        )
    return plain_completion_logits(model_call, input_ids, attention_mask, completion_len, features)


def completion_hidden_states(
    backbone_call: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    group_size: int = 1,
) -> torch.Tensor:
    """Final hidden states (n, C, H) of the positions that predict each completion token (no LM head)."""
    return completion_logits(backbone_call, input_ids, attention_mask, completion_len, group_size, "hidden")


# configuration fields of architectures whose logits are not exactly lm_head(last_hidden_state)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def split_lm_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(backbone, lm_head) of a causal LM whose logits are `lm_head(backbone(...).last_hidden_state)`.

    Works through a peft wrapper (LoRA `all-linear` does not adapt the LM head, so it stays a plain
    `nn.Linear`; the backbone's LoRA layers still follow `disable_adapter()`). None when the model does
    not split that way: no plain linear head, no separate backbone, a logit transform after the head
    (softcapping, scaling), or parameters sharded by FSDP (whose root forward gathers them).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft -> the HF model
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    prefix = getattr(base, "base_model_prefix", "")
    backbone = getattr(base, prefix, None) if prefix else None
    if type(head) is not nn.Linear or not isinstance(backbone, nn.Module) or backbone is base:
        return None
    config = getattr(base, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    if is_sharded(base):
        return None
    return backbone, head


def head_split_matches(model: nn.Module, backbone: nn.Module, head: nn.Linear) -> bool:
    """One tiny forward both ways (eval, no grad): the model's logits equal head(backbone hidden states)."""
    V = head.weight.size(0)
    ids = (torch.arange(1, 9, device=head.weight.device) * 7919 % V).unsqueeze(0)  # (1, 8)
    with torch.no_grad(), eval_mode(model):
        full = _features(model(input_ids=ids, use_cache=False), "logits").float()
        split = head(backbone(input_ids=ids, use_cache=False).last_hidden_state).float()
    if full.shape != split.shape:
        return False
    return bool((full - split).abs().max() <= 1e-4 * full.abs().max().clamp(min=1.0))


def checkpointing_active(model) -> bool:
    """True when HF gradient checkpointing runs in this call: HF layers then drop the KV cache (use_cache
    False, cache None), so the shared-prefix forward cannot run and the plain forward is used."""
    if not isinstance(model, nn.Module) or not model.training or not torch.is_grad_enabled():
        return False
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """HF gradient (activation) checkpointing, non-reentrant, on the model under any peft wrapper.

    Non-reentrant checkpointing needs no input that requires grad, so it also works under LoRA (where
    only adapter weights train); HF also hooks the input embeddings to require grad. It applies only in
    train mode with grad enabled (rollout and the reference run in eval mode without it).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
