"""Per-token log-probs of completions: the one function for the policy and the reference.

    logp[i, t] = log softmax(logits[i, t] / T)[completion_ids[i, t]]      (n, C) float32

T is the rollout's sampling temperature (TRL divides the logits by `temperature` the same way). The model's
forward runs each prompt once for its G completions (`shared_prefix.py`). By default the backbone gives
the final hidden states and `chunked_selective_log_softmax` applies the LM head a chunk of tokens at a
time: no (n, C, V) logits are ever held, forward or backward. `logprob_chunk_size: null`, a sharded policy
or an architecture whose logits are not lm_head(hidden) take the full-logits path
(`selective_log_softmax`). Entropies come from the same pass when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from quark_lightning.grpo.shared_prefix import (
    checkpointing_active,
    completion_hidden_states,
    completion_logits,
    head_split_matches,
    split_lm_head,
)
from quark_lightning.infra.precision import compute_dtype, upcast
from quark_lightning.models.reference import DisabledAdapterReference, FrozenCopyReference, eval_mode
from quark_lightning.rollout.engine import Rollout


def selective_log_softmax(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of each chosen token under softmax(logits / temperature).

    logits (B, T, V), token_ids (B, T) -> (B, T). Upcasts the whole (B, T, V) to fp32: the reference
    implementation; training uses `chunked_selective_log_softmax` on the hidden states instead.
    """
    logps = torch.log_softmax(upcast(logits) / temperature, dim=-1)  # (B, T, V)
    return torch.gather(logps, -1, token_ids.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position (differentiable).  (B, T, V) -> (B, T)."""
    logps = torch.log_softmax(upcast(logits) / temperature, dim=-1)
    return -(logps.exp() * logps).sum(-1)


def _head_logits(hidden: torch.Tensor, weight, bias, temperature: float) -> torch.Tensor:
    """fp32 (fp64 in a float64 run) logits / temperature of a chunk.  hidden (m, H), weight (V, H) -> (m, V)."""
    logits = upcast(torch.nn.functional.linear(hidden, weight, bias))
    return logits.div_(temperature) if temperature != 1.0 else logits


class _ChunkedHeadLogProbs(torch.autograd.Function):
    """log softmax(lm_head(h) / T)[token] over chunks of tokens; the backward recomputes each chunk.

    Memory: one (chunk, V) fp32 block (plus temporaries of that size) at a time, forward and backward;
    saved for the backward are only the inputs and the (M,) log-normalizers.
    """

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, token_ids, temperature, chunk_size, want_entropy, entropy_grad=False
    ):
        M, acc = hidden.size(0), compute_dtype(weight.dtype)
        logp = hidden.new_empty(M, dtype=acc)
        lse = hidden.new_empty(M, dtype=acc)
        entropy = hidden.new_zeros(M if want_entropy else 0, dtype=acc)
        for s in range(0, M, chunk_size):
            e = min(s + chunk_size, M)
            logits = _head_logits(hidden[s:e], weight, bias, temperature)  # (m, V) fp32
            lse[s:e] = torch.logsumexp(logits, dim=-1)
            logp[s:e] = logits.gather(1, token_ids[s:e, None]).squeeze(1) - lse[s:e]
            if want_entropy:  # H = lse - sum_v p_v * logit_v
                probs = torch.exp(logits - lse[s:e, None])
                entropy[s:e] = lse[s:e] - probs.mul_(logits).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, token_ids, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        dev = hidden.device.type  # the backward recomputes the logits under the forward's autocast state
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.entropy_grad = bool(want_entropy and entropy_grad)
        if not ctx.entropy_grad:
            ctx.mark_non_differentiable(entropy)  # a logged statistic (TRL's `entropy`)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, token_ids, lse = ctx.saved_tensors
        use_entropy = ctx.entropy_grad and grad_entropy is not None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        T, chunk = ctx.temperature, ctx.chunk_size
        dev, autocast_on, autocast_dtype = ctx.autocast
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = compute_dtype(weight.dtype)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.size(0), dtype=acc, device=weight.device) if need_b else None
        grad_logp = grad_logp.to(acc)
        M = hidden.size(0)
        with torch.autocast(dev, dtype=autocast_dtype, enabled=autocast_on):
            for s in range(0, M, chunk):
                e = min(s + chunk, M)
                g = grad_logp[s:e, None]  # (m, 1)
                logits = _head_logits(hidden[s:e], weight, bias, T)  # (m, V) scaled logits z
                if use_entropy:  # dH/dz = -p * (log p + H), H = -sum p log p
                    logq = logits - lse[s:e, None]  # (m, V) log p
                    probs = logq.exp()
                    ent = -(probs * logq).sum(-1, keepdim=True)  # (m, 1)
                    dlogits = probs * (-g) - grad_entropy[s:e, None].to(acc) * probs * (logq + ent)
                else:
                    # d logp / d z = onehot(token) - softmax, in place on the recomputed logits
                    dlogits = logits.sub_(lse[s:e, None]).exp_().mul_(-g)
                dlogits.scatter_add_(1, token_ids[s:e, None], g)
                if T != 1.0:
                    dlogits.div_(T)
                if need_b:
                    grad_b += dlogits.sum(0)
                dlogits = dlogits.to(weight.dtype)  # the head's matmuls in its own dtype, as autograd would
                if need_h:
                    grad_h[s:e] = dlogits @ weight
                if need_w:
                    grad_w += (dlogits.t() @ hidden[s:e].to(weight.dtype)).to(acc)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def chunked_selective_log_softmax(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 256,
    mask: torch.Tensor | None = None,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`selective_log_softmax(linear(hidden, weight, bias), token_ids, temperature)` without the logits.

    hidden (B, T, H) final hidden states, weight (V, H) the LM head, token_ids (B, T) -> log-probs (B, T)
    fp32 and, with `with_entropy`, the entropies (B, T) (detached, TRL's logged `entropy`, unless
    `entropy_grad`: then differentiable, for an entropy bonus in the loss). The LM head,
    the fp32 upcast, the log-softmax and the gather run on `chunk_size` tokens at a time, and the backward
    recomputes each chunk's logits instead of keeping them, so no (B, T, V) tensor is ever held. Tokens
    where `mask` (B, T) is 0 are skipped: their log-prob and entropy are 0 (they never reach a loss).
    Gradients flow to `hidden`, `weight` (the tied embedding under full fine-tuning) and `bias`.
    """
    B, T, H = hidden.shape
    flat_h, flat_ids = hidden.reshape(B * T, H), token_ids.reshape(B * T)
    keep = None
    if mask is not None and not bool(mask.bool().all()):
        keep = mask.reshape(B * T).bool().nonzero().squeeze(1)  # (M,)
        flat_h, flat_ids = flat_h.index_select(0, keep), flat_ids.index_select(0, keep)
    logp, entropy = _ChunkedHeadLogProbs.apply(
        flat_h,
        weight,
        bias,
        flat_ids,
        float(temperature),
        max(1, int(chunk_size)),
        with_entropy,
        entropy_grad,
    )
    if keep is not None:
        logp = logp.new_zeros(B * T).index_copy(0, keep, logp)
        entropy = entropy.new_zeros(B * T).index_copy(0, keep, entropy) if with_entropy else entropy
    return logp.view(B, T), entropy.view(B, T) if with_entropy else None


def micro_batches(n: int, size: int | None, offset: int = 0) -> list[slice]:
    """Slices of at most `size` rows over rows offset .. offset + n (None: one slice)."""
    size = size or n
    return [slice(offset + i, offset + min(i + size, n)) for i in range(0, n, size)]


class TokenLogProbs:
    """`self(model, ...)`: (n, C) log-probs (and entropies) of completion tokens under `model` as called.

    One instance per GRPO module; it remembers, per LM head, whether the chunked path reproduces the
    model's logits (checked once on a tiny input)."""

    def __init__(self, config, temperature: Callable[[], float] = lambda: 1.0):
        # config: a GRPOConfig, read at each call: num_generations (G completions share a prompt, whose
        # forward runs once), logprob_chunk_size (None = the full-logits path), micro_batch_size
        self.config = config
        self.temperature = temperature  # the rollout engine's sampling temperature, read at each call
        self._head_split_ok: dict[int, bool] = {}

    def __call__(
        self,
        model,
        input_ids: torch.Tensor,  # (n, P + C)
        attention_mask: torch.Tensor,  # (n, P + C)
        completion_ids: torch.Tensor,  # (n, C)
        completion_mask: torch.Tensor | None = None,  # (n, C); None = every position
        with_entropy: bool = False,
        entropy_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, C) fp32 log-probs, and (n, C) entropies when `with_entropy` (detached unless `entropy_grad`).
        Positions where `completion_mask` is 0 are 0 on the chunked path (never computed)."""
        C, T = completion_ids.size(1), self.temperature()
        G = (
            1 if checkpointing_active(model) else self.config.num_generations
        )  # HF drops the cache under checkpointing
        parts = self._lm_head_split(model)
        if parts is None:
            logits = completion_logits(model, input_ids, attention_mask, C, G)  # (n, C, V)
            logp = selective_log_softmax(logits, completion_ids, T)
            if not with_entropy:
                return logp, None
            return logp, token_entropy(logits if entropy_grad else logits.detach(), T)
        backbone, head = parts
        hidden = completion_hidden_states(backbone, input_ids, attention_mask, C, G)  # (n, C, H)
        return chunked_selective_log_softmax(
            hidden,
            head.weight,
            completion_ids,
            bias=head.bias,
            temperature=T,
            chunk_size=self.config.logprob_chunk_size,
            mask=completion_mask,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
        )

    @torch.no_grad()
    def of_rollout(self, model, rollout: Rollout) -> torch.Tensor:
        """(N, C) log-probs of every completion of the rollout under `model`, micro-batch by micro-batch,
        without autograd: the reference's, and the old policy's when a rollout is reused."""
        out = []
        for sl in micro_batches(rollout.completion_ids.size(0), self.config.micro_batch_size):
            logp, _ = self(
                model,
                rollout.input_ids[sl],
                rollout.attention_mask[sl],
                rollout.completion_ids[sl],
                rollout.completion_mask[sl],
            )
            out.append(logp)
        return torch.cat(out)

    def _lm_head_split(self, model) -> tuple[nn.Module, nn.Linear] | None:
        """(backbone, lm_head) when the chunked path applies to `model`, else None (full logits)."""
        if not self.config.logprob_chunk_size or not isinstance(model, nn.Module):
            return None
        parts = split_lm_head(model)
        if parts is None:
            return None
        key = id(parts[1])
        if key not in self._head_split_ok:
            self._head_split_ok[key] = head_split_matches(model, *parts)
        return parts if self._head_split_ok[key] else None


@contextmanager
def reference_model(reference, policy) -> Iterator:
    """The frozen reference as a model to call: the frozen copy, or the policy with its adapter off."""
    if isinstance(reference, FrozenCopyReference):
        yield reference.frozen.module
    elif isinstance(reference, DisabledAdapterReference):
        with policy.disable_adapter(), eval_mode(policy):
            yield policy
    else:  # another kind: its own call (full-logits path)
        yield lambda **kw: reference.outputs(policy, **kw)
