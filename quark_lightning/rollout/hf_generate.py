"""Rollout with a Hugging Face causal LM (CPU and GPU); implements `rollout.engine.RolloutEngine`.

`HFGenerateEngine.generate(policy, tokenizer, prompts, G)` renders each prompt with the tokenizer's chat
template, left-pads the batch and samples G completions per prompt (the G completions of a prompt are
contiguous rows). It returns token ids with a completion mask that ends at (and includes) the first EOS.

Prompts longer than `max_prompt_length` keep their last tokens (left truncation, as TRL: the generation
header and the latest turn survive); `Rollout.prompt_truncated` marks them.

Two decoding paths, chosen per call:

- `decode="fast"` (default), our own KV-cache loop, built for speed:
    * the prompt is prefilled ONCE per prompt and its KV cache is repeated G times (`generate` with
      `num_return_sequences=G` expands the input before prefill, so it prefills every prompt G times);
    * the KV cache lives in buffers sized for the whole rollout, written in place each step
      (`PreallocatedLayer`; transformers' DynamicCache re-concatenates every layer's keys and values
      every step), and the attention mask is a prefix view of one preallocated (N, P + C) tensor;
    * rows that have emitted EOS leave the batch (`generate` keeps computing them until the longest
      finishes), so late decode steps run only on unfinished completions; EOS is read back to the host
      every `sync_every` steps (each step on CPU, where the read is free);
    * only the last position's logits are computed (`logits_to_keep=1`) in prefill;
    * one sampler on the logits: temperature, then top-k, then top-p, then min-p (the order and the
      semantics of transformers' warpers), then one inverse-CDF draw per row (`draw`; the distribution of
      `torch.multinomial`, which draws an exponential per vocabulary entry);
    * opt-in `prepack_weights` (CPU, fp32): the decode steps multiply by MKL-packed weight copies
      (`prepacked_linears`, rollout/low_precision.py), packed once per rollout.
- `decode="generate"`: `model.generate(num_return_sequences=G)`. Used automatically when the engine
  needs something the fast loop does not do (a repetition penalty) or when the policy is sharded
  (FSDP), where every rank must run the same number of forward calls (`synced_gpus=True`).

Both run without autograd (`torch.inference_mode`; `torch.no_grad` for FSDP2, whose parameter all-gather
buffers must not become inference tensors) and with the policy temporarily in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import transformers

from quark_lightning.config.typed import typed
from quark_lightning.infra.distributed import is_sharded
from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.precision import upcast
from quark_lightning.models.reference import eval_mode
from quark_lightning.rollout.engine import (
    Completion,
    Rollout,
    completion_mask_from_ids,
    render_prompts,
    sample_next,
    stop_string_positions,
    token_logprobs,
)
from quark_lightning.rollout.low_precision import RolloutCopy, base_model, pick_precision, prepacked_linears
from quark_lightning.rollout.rollout_settings import HFRolloutSettings

__all__ = [
    "HFGenerateEngine",
    "Rollout",
    "completion_mask_from_ids",
    "render_prompts",
]

# transformers 5 renamed the forward's `past_key_values` argument to `cache`
CACHE_KWARG = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"




# ---------------------------------------------------------------- the rollout-sized KV cache
try:  # transformers >= 4.54: per-layer cache objects
    from transformers.cache_utils import DynamicLayer
except ImportError:  # older transformers: the decode loop keeps the growing (torch.cat) cache
    DynamicLayer = None


if DynamicLayer is not None:

    class PreallocatedLayer(DynamicLayer):
        """A DynamicLayer whose keys/values are views of buffers sized for the whole rollout.

        `update` writes the step's keys/values in place instead of `torch.cat`-ing the whole cache every
        step; the attention still sees exactly the filled prefix, so the result is DynamicLayer's.
        """

        def __init__(self, layer, repeats: int, capacity: int):
            super().__init__()
            keys, values = layer.keys, layer.values  # (B, H, L, D)
            B, H, L, _ = keys.shape
            self.kbuf = keys.new_empty(B * repeats, H, capacity, keys.size(-1))
            self.vbuf = values.new_empty(B * repeats, H, capacity, values.size(-1))
            self.kbuf.view(B, repeats, H, capacity, -1)[:, :, :, :L] = keys.unsqueeze(1)  # repeat_interleave
            self.vbuf.view(B, repeats, H, capacity, -1)[:, :, :, :L] = values.unsqueeze(1)
            self.rows, self.length = B * repeats, L
            self.device, self.dtype, self.is_initialized = keys.device, keys.dtype, True
            self._views()

        def _views(self) -> None:
            self.keys = self.kbuf[: self.rows, :, : self.length]
            self.values = self.vbuf[: self.rows, :, : self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            q = key_states.size(-2)
            self.kbuf[: self.rows, :, self.length : self.length + q] = key_states
            self.vbuf[: self.rows, :, self.length : self.length + q] = value_states
            self.length += q
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            n = indices.numel()
            self.kbuf[:n, :, : self.length] = self.keys[indices]  # advanced indexing copies first
            self.vbuf[:n, :, : self.length] = self.values[indices]
            self.rows = n
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            raise NotImplementedError("PreallocatedLayer is built already repeated")


def preallocate_cache(cache, repeats: int, capacity: int):
    """The prefill's cache repeated `repeats` times per row, its plain layers moved into rollout-sized buffers.

    Layers of any other kind (sliding window, ...) and old transformers keep their own cache class.
    """
    layers = getattr(cache, "layers", None)
    if DynamicLayer is None or not layers or any(type(layer) is not DynamicLayer for layer in layers):
        if repeats > 1:
            cache.batch_repeat_interleave(repeats)
        return cache
    cache.layers = [PreallocatedLayer(layer, repeats, capacity) for layer in layers]
    return cache


class HFGenerateEngine:
    """`rollout=hf`: the keys are `HFRolloutSettings`' (rollout/rollout_settings.py), checked once here."""

    SETTINGS = HFRolloutSettings

    def __init__(self, **settings: Any):
        s = self.settings = typed(HFRolloutSettings, settings, "rollout")
        # completions end at the tokenizer's EOS, at any of these extra ids, or once a stop string is
        # complete (the stop string stays in the completion, as with transformers' stop_strings)
        self.extra_eos_ids = [int(i) for i in s.eos_token_ids]
        self.stop_strings = [str(t) for t in s.stop_strings]
        self.sampling = dict(
            max_new_tokens=s.max_new_tokens,
            do_sample=True,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or 0,
            repetition_penalty=s.repetition_penalty or 1.0,
        )
        if s.min_p is not None:
            self.sampling["min_p"] = s.min_p
        self.max_new_tokens, self.max_prompt_length = s.max_new_tokens, s.max_prompt_length
        self.decode, self.share_prefill = s.decode, s.share_prefill
        # the decode loop reads EOS back to the host every `sync_every` steps (None: every step on CPU, where
        # a read costs nothing; every 8 on an accelerator, where it stalls the queue)
        self.sync_every = s.sync_every
        self.prepack_weights = s.prepack_weights  # CPU fp32 decode on MKL-packed weights (`prepacked_linears`)
        self.precision = s.precision  # the sampling copy's format (rollout/low_precision.py); fp32 = the policy
        self.rollout_copy: RolloutCopy | None = None

    def encode_prompts(self, tokenizer, prompts: Sequence[dict[str, Any]], device) -> dict[str, torch.Tensor]:
        """Chat-rendered prompts, left-padded: input_ids, attention_mask (B, P); prompt_truncated (B,) bool.

        A prompt longer than `max_prompt_length` keeps its LAST `max_prompt_length` tokens (left truncation,
        as TRL): the generation header and the latest turn survive, the oldest context goes.
        """
        rows = tokenizer(render_prompts(tokenizer, prompts), add_special_tokens=False)["input_ids"]
        limit = self.max_prompt_length or tokenizer.model_max_length
        truncated = [len(r) > limit for r in rows]
        rows = [r[-limit:] if t else r for r, t in zip(rows, truncated)]
        P = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), P), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), P), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, P - len(r) :] = torch.tensor(r, dtype=torch.long)
                mask[i, P - len(r) :] = 1
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "prompt_truncated": torch.tensor(truncated, dtype=torch.bool, device=device),
        }

    def use_fast_path(self, policy) -> bool:
        return (
            self.decode == "fast"
            and self.sampling["repetition_penalty"] == 1.0
            and not is_sharded(policy)
            and hasattr(policy, "forward")
        )

    # ------------------------------------------------------------------ decoding
    def _sample(self, policy, tokenizer, enc: dict[str, torch.Tensor], num_generations: int, greedy: bool):
        """Prompt + completion ids (B * G, P + C), and the sampler's token log-probs (B * G, C) (the fast
        path when sampling; else None); the path is chosen by `use_fast_path`."""
        sharded = is_sharded(policy)
        grad_off = torch.no_grad() if sharded else torch.inference_mode()
        with grad_off, eval_mode(policy):
            sampler = policy if greedy else self.sampling_model(policy)  # greedy answers: the policy itself
            if self.use_fast_path(policy):
                completion, logps = self._decode_fast(sampler, tokenizer, enc, num_generations, greedy)
                prompt = enc["input_ids"].repeat_interleave(num_generations, dim=0)
                return torch.cat([prompt, completion], dim=1), logps
            return self._decode_generate(policy, tokenizer, enc, num_generations, greedy, sharded), None

    def sampling_model(self, policy):
        """What samples: the policy (fp32), or its low-precision copy refreshed from its current weights."""
        if self.precision == "fp32":
            return policy
        if not self.use_fast_path(policy) or next(policy.parameters()).device.type != "cpu":
            raise ConfigError(
                f"rollout.precision={self.precision} is a CPU rollout copy for the fast decode loop; this policy "
                "is sharded, on an accelerator, or decoded with `generate`. Fix: rollout.precision=fp32 (on GPU: "
                "rollout=vllm rollout.dtype=bfloat16)"
            )
        if self.rollout_copy is None:
            precision = self.precision
            if precision == "auto":
                cfg = getattr(base_model(policy), "config", None)
                hidden = getattr(cfg, "hidden_size", 576)
                precision = pick_precision(hidden, getattr(cfg, "intermediate_size", 4 * hidden), rows=8)
                print(f"rollout.precision=auto: {precision} is the fastest here (timed on this machine)")
            self.rollout_copy = RolloutCopy(precision)
        return self.rollout_copy.refresh(policy)

    def _decode_generate(self, policy, tokenizer, enc, num_generations: int, greedy: bool, synced: bool):
        sampling = dict(self.sampling)
        if greedy:
            sampling.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            sampling.pop("min_p", None)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if greedy and num_generations > 1:  # `generate` refuses greedy with num_return_sequences > 1
            ids, mask = ids.repeat_interleave(num_generations, 0), mask.repeat_interleave(num_generations, 0)
            num_generations = 1
        stops = {"stop_strings": self.stop_strings, "tokenizer": tokenizer} if self.stop_strings else {}
        return policy.generate(
            input_ids=ids,
            attention_mask=mask,
            **sampling,
            **stops,
            num_return_sequences=num_generations,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=self.stop_ids(tokenizer),
            use_cache=True,
            synced_gpus=synced,
        )

    def stop_ids(self, tokenizer) -> list[int]:
        """The token ids that end a completion: the tokenizer's EOS and `eos_token_ids`."""
        return list(dict.fromkeys([tokenizer.eos_token_id, *self.extra_eos_ids]))

    def _stopped_by_string(self, tokenizer, ids: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the row's text so far contains a stop string.  ids (n, t)."""
        texts = tokenizer.batch_decode(ids, skip_special_tokens=False)
        return torch.tensor([any(s in t for s in self.stop_strings) for t in texts], device=ids.device)

    @staticmethod
    def _prefill(policy, ids, mask, positions, G: int, capacity: int):
        """One prefill per prompt; its KV cache repeated G times into buffers that hold the whole rollout,
        and the last position's logits (B * G, V)."""
        out = policy(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        return preallocate_cache(cache, G, capacity), out.logits[:, -1].repeat_interleave(G, dim=0)

    def _decode_fast(self, policy, tokenizer, enc, num_generations: int, greedy: bool):
        """Shared prefill, then a KV-cache decode loop over the unfinished rows.
        -> completion ids (B * G, C), the sampler's token log-probs (B * G, C) or None when greedy"""
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, P)
        G, pad = num_generations, tokenizer.pad_token_id
        eos = torch.tensor(self.stop_ids(tokenizer), device=ids.device)
        if not self.share_prefill:  # prefill every completion's copy of the prompt, as `generate` does
            ids, mask, G = ids.repeat_interleave(G, dim=0), mask.repeat_interleave(G, dim=0), 1
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P) skips left padding
        B, P = ids.shape
        N, C = B * G, self.max_new_tokens  # N = B * num_generations either way
        cache, logits = self._prefill(policy, ids, mask, positions, G, P + C)  # (N, V)
        attn = mask.new_ones(N, P + C)  # (N, P + C): the step's mask is a prefix view, never re-concatenated
        attn[:, :P] = mask.repeat_interleave(G, dim=0)
        last_pos = positions[:, -1:].repeat_interleave(G, dim=0)  # (N, 1)
        result = torch.full((N, C), pad, dtype=ids.dtype, device=ids.device)  # (N, C)
        rows = torch.arange(N, device=ids.device)  # rows of `result` still in the batch
        done = torch.zeros(N, dtype=torch.bool, device=ids.device)  # (n,) emitted EOS, still in the batch
        sync_every = self.sync_every or (1 if ids.device.type == "cpu" else 8)
        warp = {k: self.sampling[k] for k in ("temperature", "top_k", "top_p")}
        min_p, steps = self.sampling.get("min_p"), 0
        logps = None if greedy else torch.zeros(N, C, dtype=upcast(logits[:1]).dtype, device=ids.device)
        packing = prepacked_linears(policy, N) if self.prepack_weights else contextlib.nullcontext(False)
        with packing as packed:
            for step in range(C):
                token = sample_next(logits, **warp, min_p=min_p, greedy=greedy)  # (n,)
                result[rows, step] = token  # tokens after a row's EOS are masked to pad by `to_rollout`
                if logps is not None:  # what the sampler saw (rollout correction, grpo/loss.py)
                    logps[rows, step] = token_logprobs(logits, token, warp["temperature"])
                done |= torch.isin(token, eos)
                steps = step + 1
                if steps == C:
                    break
                if self.stop_strings and steps % sync_every == 0:  # decode the unfinished rows so far
                    done |= self._stopped_by_string(tokenizer, result[rows, :steps])
                if steps % sync_every == 0 and bool(done.any()):  # the only host sync of the loop
                    if bool(done.all()):
                        break
                    if not packed:  # finished rows leave the batch and the cache (packed: N rows stay)
                        keep = (~done).nonzero().squeeze(1)
                        cache.batch_select_indices(keep)
                        attn[: keep.numel()] = attn[keep]
                        rows, token, last_pos, done = rows[keep], token[keep], last_pos[keep], done[keep]
                last_pos = last_pos + 1
                out = policy(
                    input_ids=token.unsqueeze(1),
                    attention_mask=attn[: token.size(0), : P + steps],
                    position_ids=last_pos,
                    use_cache=True,
                    **{CACHE_KWARG: cache},
                )
                logits = out.logits[:, -1]
        return result[:, :steps], (logps[:, :steps] if logps is not None else None)

    # ------------------------------------------------------------------ the interface
    def step_metrics(self) -> dict[str, float]:
        """What the step logs about the engine: the rollout copy's last refresh time (rollout.precision)."""
        if self.rollout_copy is None:
            return {}
        return {"time/rollout_refresh": self.rollout_copy.refresh_seconds}

    @property
    def temperature(self) -> float | None:
        """The sampling temperature (the policy's token log-probs divide the logits by it)."""
        return self.sampling.get("temperature")

    def generate(
        self, policy, tokenizer, prompts: Sequence[dict[str, Any]], num_generations: int, greedy: bool = False
    ) -> Rollout:
        device = next(policy.parameters()).device
        enc = self.encode_prompts(tokenizer, prompts, device)
        # Tensors made under inference_mode cannot enter autograd; clone them out of it.
        out, logps = self._sample(policy, tokenizer, enc, num_generations, greedy)
        rollout = self.to_rollout(
            tokenizer, prompts, enc, out.clone(), num_generations, self.stop_ids(tokenizer), self.stop_strings
        )
        if logps is not None and logps.size(1) == rollout.completion_ids.size(1):
            rollout.sampling_logp = logps.clone() * rollout.completion_mask  # 0 after the stop
        return rollout

    @staticmethod
    def to_rollout(
        tokenizer,
        prompts,
        enc: dict[str, torch.Tensor],
        out: torch.Tensor,
        G: int,
        stop_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] = (),
    ) -> Rollout:
        """Split (B * G, P + C) prompt+completion ids into a Rollout; a completion ends at its first stop id
        (default: the tokenizer's EOS) or with the token that completes a stop string."""
        prompt_len = enc["input_ids"].size(1)
        completion_ids = out[:, prompt_len:]
        if completion_ids.size(1) == 0:  # every sequence stopped at once: keep one (EOS) column
            completion_ids = torch.full((out.size(0), 1), tokenizer.eos_token_id, device=out.device)
        stop_at = (
            stop_string_positions(tokenizer, completion_ids.cpu(), stop_strings) if stop_strings else None
        )
        mask, truncated = completion_mask_from_ids(
            completion_ids, list(stop_ids or [tokenizer.eos_token_id]), stop_at
        )
        completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        repeat = lambda t: t.repeat_interleave(G, dim=0)  # noqa: E731
        prompt_truncated = enc.get("prompt_truncated")
        if prompt_truncated is None:
            prompt_truncated = torch.zeros(enc["input_ids"].size(0), dtype=torch.bool, device=out.device)
        return Rollout(
            prompt_ids=repeat(enc["input_ids"]),
            prompt_mask=repeat(enc["attention_mask"]),
            completion_ids=completion_ids,
            completion_mask=mask,
            completions=[Completion(t.strip(), cut) for t, cut in zip(texts, truncated.tolist())],
            prompts=[p for p in prompts for _ in range(G)],
            truncated=truncated,
            prompt_truncated=repeat(prompt_truncated),
        )
