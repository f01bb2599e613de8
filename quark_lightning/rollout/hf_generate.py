"""Rollout with a Hugging Face causal LM (CPU and GPU); implements `rollout.base.RolloutEngine`.

`HFGenerateEngine.generate(policy, tokenizer, prompts, G)` renders each prompt with the tokenizer's chat
template, left-pads the batch and samples G completions per prompt (the G completions of a prompt are
contiguous rows). It returns token ids with a completion mask that ends at (and includes) the first EOS.

Two decoding paths, chosen per call:

- `decode="fast"` (default), our own KV-cache loop, built for speed:
    * the prompt is prefilled ONCE per prompt and its KV cache is repeated G times (`generate` with
      `num_return_sequences=G` expands the input before prefill, so it prefills every prompt G times);
    * rows that have emitted EOS leave the batch (`generate` keeps computing them until the longest
      finishes), so late decode steps run only on unfinished completions;
    * only the last position's logits are computed (`logits_to_keep=1`) in prefill;
    * one sampler on the logits: temperature, then top-k, then top-p, then min-p (the order and the
      semantics of transformers' warpers), `torch.multinomial`.
- `decode="generate"`: `model.generate(num_return_sequences=G)`. Used automatically when the engine
  needs something the fast loop does not do (a repetition penalty) or when the policy is sharded
  (FSDP), where every rank must run the same number of forward calls (`synced_gpus=True`).

Both run without autograd (`torch.inference_mode`; `torch.no_grad` for FSDP2, whose parameter all-gather
buffers must not become inference tensors) and with the policy temporarily in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import transformers

from quark_lightning.distributed import is_sharded
from quark_lightning.models.reference import eval_mode
from quark_lightning.rollout.base import Rollout, completion_mask_from_ids, render_prompts

__all__ = ["HFGenerateEngine", "Rollout", "completion_mask_from_ids", "render_prompts", "sample_next"]

DECODE_MODES = ("fast", "generate")
# transformers 5 renamed the forward's `past_key_values` argument to `cache`
CACHE_KWARG = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


def sample_next(
    logits: torch.Tensor,  # (n, V)
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float | None = None,
    greedy: bool = False,
) -> torch.Tensor:
    """One token per row.  (n, V) -> (n,). Warpers in transformers' order: temperature, top-k, top-p, min-p."""
    if greedy:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k and top_k < scores.size(-1):
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (n, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)  # ascending: drop the low tail summing to <= 1 - top_p
        drop_sorted = cum <= (1.0 - top_p)
        drop_sorted[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    probs = scores.softmax(-1)  # (n, V)
    if min_p is not None:
        probs = probs.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, 0.0)
    return torch.multinomial(probs, 1).squeeze(1)


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
        decode: str = "fast",
        share_prefill: bool = True,
    ):
        if decode not in DECODE_MODES:
            raise ValueError(f"rollout.decode: {decode!r} is not one of {DECODE_MODES}")
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
        self.decode = decode
        self.share_prefill = share_prefill

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

    def use_fast_path(self, policy) -> bool:
        return (
            self.decode == "fast"
            and self.sampling["repetition_penalty"] == 1.0
            and not is_sharded(policy)
            and hasattr(policy, "forward")
        )

    # ------------------------------------------------------------------ decoding
    def _sample(self, policy, tokenizer, enc: dict[str, torch.Tensor], num_generations: int, greedy: bool):
        """Prompt + completion ids, (B * G, P + C); the path is chosen by `use_fast_path`."""
        sharded = is_sharded(policy)
        grad_off = torch.no_grad() if sharded else torch.inference_mode()
        with grad_off, eval_mode(policy):
            if self.use_fast_path(policy):
                completion = self._decode_fast(policy, tokenizer, enc, num_generations, greedy)
                prompt = enc["input_ids"].repeat_interleave(num_generations, dim=0)
                return torch.cat([prompt, completion], dim=1)
            return self._decode_generate(policy, tokenizer, enc, num_generations, greedy, sharded)

    def _decode_generate(self, policy, tokenizer, enc, num_generations: int, greedy: bool, synced: bool):
        sampling = dict(self.sampling)
        if greedy:
            sampling.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            sampling.pop("min_p", None)
        return policy.generate(
            **enc,
            **sampling,
            num_return_sequences=num_generations,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            synced_gpus=synced,
        )

    def _decode_fast(self, policy, tokenizer, enc, num_generations: int, greedy: bool) -> torch.Tensor:
        """Shared prefill, then a KV-cache decode loop over the unfinished rows.  -> (B * G, C)"""
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, P)
        G, eos, pad = num_generations, tokenizer.eos_token_id, tokenizer.pad_token_id
        if not self.share_prefill:  # prefill every completion's copy of the prompt, as `generate` does
            ids, mask, G = ids.repeat_interleave(G, dim=0), mask.repeat_interleave(G, dim=0), 1
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P) skips left padding
        out = policy(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        if G > 1:
            cache.batch_repeat_interleave(G)  # (B, ...) -> (B * G, ...): one prefill per prompt
        logits = out.logits[:, -1].repeat_interleave(G, dim=0)  # (N, V)
        mask = mask.repeat_interleave(G, dim=0)  # (N, P)
        last_pos = positions[:, -1:].repeat_interleave(G, dim=0)  # (N, 1)
        N = ids.size(0) * G  # = B * num_generations either way
        result = torch.full((N, self.max_new_tokens), pad, dtype=ids.dtype, device=ids.device)  # (N, C)
        rows = torch.arange(N, device=ids.device)  # rows of `result` still in the batch
        warp = {k: self.sampling[k] for k in ("temperature", "top_k", "top_p")}
        steps = 0
        for step in range(self.max_new_tokens):
            token = sample_next(logits, **warp, min_p=self.sampling.get("min_p"), greedy=greedy)  # (n,)
            result[rows, step] = token
            steps = step + 1
            alive = token != eos
            if step + 1 == self.max_new_tokens or not bool(alive.any()):
                break
            if not bool(alive.all()):  # finished rows leave the batch and the cache
                keep = alive.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, token, mask, last_pos = rows[keep], token[keep], mask[keep], last_pos[keep]
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)  # (n, P + step + 1)
            last_pos = last_pos + 1
            out = policy(
                input_ids=token.unsqueeze(1),
                attention_mask=mask,
                position_ids=last_pos,
                use_cache=True,
                **{CACHE_KWARG: cache},
            )
            logits = out.logits[:, -1]
        return result[:, :steps]

    # ------------------------------------------------------------------ the interface
    def generate(
        self, policy, tokenizer, prompts: Sequence[dict[str, Any]], num_generations: int, greedy: bool = False
    ) -> Rollout:
        device = next(policy.parameters()).device
        enc = self.encode_prompts(tokenizer, prompts, device)
        # Tensors made under inference_mode cannot enter autograd; clone them out of it.
        out = self._sample(policy, tokenizer, enc, num_generations, greedy).clone()
        return self.to_rollout(tokenizer, prompts, enc, out, num_generations)

    @staticmethod
    def to_rollout(tokenizer, prompts, enc: dict[str, torch.Tensor], out: torch.Tensor, G: int) -> Rollout:
        """Split (B * G, P + C) prompt+completion ids into a Rollout."""
        prompt_len = enc["input_ids"].size(1)
        completion_ids = out[:, prompt_len:]
        if completion_ids.size(1) == 0:  # every sequence stopped at once: keep one (EOS) column
            completion_ids = torch.full((out.size(0), 1), tokenizer.eos_token_id, device=out.device)
        mask, truncated = completion_mask_from_ids(completion_ids, tokenizer.eos_token_id)
        completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        repeat = lambda t: t.repeat_interleave(G, dim=0)  # noqa: E731
        return Rollout(
            prompt_ids=repeat(enc["input_ids"]),
            prompt_mask=repeat(enc["attention_mask"]),
            completion_ids=completion_ids,
            completion_mask=mask,
            completions=[t.strip() for t in texts],
            prompts=[p for p in prompts for _ in range(G)],
            truncated=truncated,
        )
