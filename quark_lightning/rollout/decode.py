"""The pieces of the HF engine's own decode loop (rollout/hf_generate.py): drawing the next token under the
sampling settings, a static KV cache allocated once per rollout, and linear layers prepacked once per
rollout for the CPU's fast path."""

from __future__ import annotations

import contextlib
import functools

import torch

from quark_lightning.infra.precision import upcast

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
    scores = upcast(logits) / temperature
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
    return draw(probs)


def token_logprobs(logits: torch.Tensor, token: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The sampler's log-prob of each drawn token: log-softmax(logits / T) at it, before top-k / top-p /
    min-p (the distribution the trainer's token log-probs are of).  (n, V), (n,) -> (n,)"""
    scores = upcast(logits) / (temperature or 1.0)
    return (scores.gather(1, token.unsqueeze(1)) - torch.logsumexp(scores, dim=-1, keepdim=True)).squeeze(1)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row with probability proportional to `probs` (n, V), by inverse CDF.  -> (n,)

    One uniform per row and a search in the running sum: the same distribution as
    `torch.multinomial(probs, 1)`, which draws an exponential for every vocabulary entry (10-20 ms per
    decode step for 8 rows of a 49 K vocabulary on one CPU thread, against well under 1 ms here).
    A zero-probability entry is never drawn (its running sum equals the previous one).
    """
    cum = probs.cumsum(-1)  # (n, V)
    u = torch.rand(probs.size(0), 1, device=probs.device, dtype=cum.dtype) * cum[:, -1:]  # (n, 1)
    index = torch.searchsorted(cum, u, right=True)  # first entry whose running sum exceeds u
    over = index >= probs.size(-1)  # u rounded up to the total: take the most likely entry
    return torch.where(over, probs.argmax(-1, keepdim=True), index).squeeze(1)


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


def _packed_linear(module: torch.nn.Linear, packed: torch.Tensor, rows: int, x: torch.Tensor) -> torch.Tensor:
    if x.numel() // x.size(-1) == rows:
        return torch.ops.mkl._mkl_linear(x, packed, module.weight, module.bias, rows)
    return torch.nn.functional.linear(x, module.weight, module.bias)


@contextlib.contextmanager
def prepacked_linears(policy: torch.nn.Module, rows: int):
    """Within the block, the policy's fp32 CPU `nn.Linear`s multiply `rows`-row inputs with weights that MKL
    packed once on entry (`cblas_sgemm_pack`), instead of packing them again inside every call.

    At 8 rows, MKL's sgemm on the plain weight reads it at well under the machine's streaming bandwidth
    (SmolLM2, one thread: ~100 ms for the 538 MB of weights against ~43 ms for one row); on the packed copy
    it takes ~70 ms. Packing costs ~0.3 s and one extra copy of the weights per rollout (the weights change
    every optimizer step), and the products differ from `F.linear`'s in the last bits. Yields whether any
    layer was packed (no MKL, or no fp32 CPU layer: nothing changes). Inputs of another row count take
    the plain weight.
    """
    linears = [
        m
        for m in policy.modules()
        if type(m) is torch.nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
    ]
    mkl = getattr(torch.ops, "mkl", None)
    if not linears or not torch.backends.mkl.is_available() or not hasattr(mkl, "_mkl_linear"):
        yield False
        return
    try:
        for m in linears:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(m.weight.detach(), rows)
            m.forward = functools.partial(_packed_linear, m, packed, rows)  # shadows the class's forward
        yield True
    finally:
        for m in linears:
            m.__dict__.pop("forward", None)
