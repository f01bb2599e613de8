"""A low-precision rollout copy of the policy (CPU): decode reads fewer bytes per token.

Every decode step reads every weight once, so a smaller format reads fewer bytes (at 8 rows on one CPU core
the products are about as compute-bound as memory-bound: docs/manual.md). `rollout.precision` picks the format
of the copy the HF engine samples with (training and reference log-probs stay in the trainer's precision):

    fp32   no copy: the policy itself (greedy output equals `generate` on the policy)
    bf16   a bfloat16 copy (2 bytes a weight; fast where the CPU has AVX-512 BF16 or AMX). Its linear
           layers multiply on weights oneDNN reorders once per refresh (`PackedBf16Linear`), not inside
           every call, and its attention runs in fp32 (`fp32_attention`): on SmolLM2 at 8 rows, one thread,
           the linears take ~25 ms a decode step packed against ~44 ms with `F.linear` in bf16, and CPU's
           bf16 SDPA kernel takes 450-900 us a layer at one query token against 100-175 us upcast to fp32
    int8   every nn.Linear dynamically quantized to int8 (1 byte a weight, per-tensor symmetric, as
           `torch.ao.quantization.quantize_dynamic`; activations quantized per call); the embeddings and
           norms stay fp32. Fast (SmolLM2: 33.8 ms a decode step against 101.6 ms in fp32), but quantizing
           the activations changes a small model's distribution a lot: on SmolLM2, KL(fp32 || int8) of the
           next token was 1.4-1.6 nats on a probe sentence (top-1 agreement 41-56%), against 0.002 for bf16.
           Opt-in only; measure `sampling/kl` before training with it.
    w8     weight-only int8: every nn.Linear's weight int8 with one scale per output row, bf16 activations
           (`torch._weight_int8pack_mm`), the rest of the model bf16: 1 byte a weight read, the activations
           never quantized
    auto   the faster of fp32 and bf16 on this machine (the formats that keep the distribution), timed once
           at start-up on a linear layer shaped like the policy's, at the rollout's row count

The copy is refreshed from the policy's current weights before every sampled rollout (`refresh`): a LoRA
policy's adapters are merged into the copy out of place (the policy and its frozen base, the reference,
are never modified). The copy's weights differ from the policy's by rounding, so its sampling
distribution does too: the step logs `sampling/kl`, and `algorithm.vllm_importance_sampling_correction`
corrects it (grpo/loss.py). Greedy answers (the closed loop, evaluation) use the policy
itself, so what is measured is the trained policy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
import warnings
from collections.abc import Iterable

import torch

from quark_lightning.rollout.policy_weights import merged_policy_weights
from quark_lightning.rollout.rollout_settings import PRECISIONS


def _quantize_dynamic(module: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():  # torch.ao.quantization's eager API is deprecated but present (2.13)
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric int8, the scale of quantize_dynamic's default weight observer (min/max)."""
    scale = max(float(weight.abs().max()) / 127.5, 1e-8)
    return torch.quantize_per_tensor(weight.detach().float().contiguous(), scale, 0, torch.qint8)


def _row_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) -> int8 weight (out, in) and one symmetric scale per output row (out,)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    return torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8), scales


class Int8WeightLinear(torch.nn.Module):
    """A linear layer with an int8 weight (per-row scales) and bf16 activations: y = x W^T s + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_int8", torch.empty(weight.shape, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(weight.size(0), dtype=torch.bfloat16))
        self.register_buffer("bias", None if bias is None else torch.empty(bias.shape, dtype=torch.bfloat16))
        self.set_weight(weight, bias)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        q, scales = _row_int8(weight)
        self.weight_int8.copy_(q)
        self.scales.copy_(scales)
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        shape = x.shape[:-1]
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16), self.weight_int8, self.scales)
        y = y.reshape(*shape, self.out_features)
        return y + self.bias if self.bias is not None else y


def onednn_bf16() -> bool:
    """Whether this CPU build can multiply bf16 on oneDNN-reordered weights (`PackedBf16Linear`)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedBf16Linear(torch.nn.Module):
    """A bf16 linear layer on a weight oneDNN reordered once for `rows`-row inputs: y = x W^T + b.

    `F.linear` in bf16 hands oneDNN the plain weight in every call; at 8 rows that costs nearly as much as
    the product itself (measured above). Here `set_weight` reorders it once per refresh. Inputs of any row count
    are accepted (the prefill's too) and the products equal `F.linear`'s in bf16 (the same kernel).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 8):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.rows = rows
        self.packed: torch.Tensor | None = None  # an mkldnn tensor: not a buffer, never saved
        self.bias = None if bias is None else torch.empty(bias.shape, dtype=torch.bfloat16)
        self.set_weight(weight, bias)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous(), self.rows)
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, self.bias, "none", [], "")


def _replace_linears(module: torch.nn.Module, make) -> torch.nn.Module:
    """Every plain nn.Linear of `module` replaced by `make(weight, bias)`."""
    for name, child in list(module.named_modules()):
        if type(child) is torch.nn.Linear:
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, attr, make(child.weight, child.bias))
    return module


FP32_ATTENTION = "quark_sdpa_fp32"


def _sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention computed in fp32 and returned in the query's dtype."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


def fp32_attention(model: torch.nn.Module) -> bool:
    """Make `model` (a transformers model using SDPA) attend in fp32; its weights and KV cache stay as they
    are. Returns False, changing nothing, where this transformers has no attention registry (< 4.48) or the
    model attends otherwise."""
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        return False
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(FP32_ATTENTION, _sdpa_in_fp32)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FP32_ATTENTION, sdpa_mask)  # the masks SDPA takes
    config._attn_implementation = FP32_ATTENTION
    return True


def _packed_bf16(module: torch.nn.Module, pack: bool = True, attention_fp32: bool = True) -> torch.nn.Module:
    """`module` in bf16: linears on oneDNN-packed weights where the CPU supports it, attention in fp32."""
    if pack and onednn_bf16():
        _replace_linears(module, PackedBf16Linear)
    if attention_fp32:
        fp32_attention(module)
    return module.to(torch.bfloat16)


def _weight_only_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Every nn.Linear of `module` replaced by an Int8WeightLinear (quantized from its fp32 weight); the rest
    cast to bf16 (int8 tensors are left as they are)."""
    return _replace_linears(module, Int8WeightLinear).to(torch.bfloat16)


def pick_precision(
    in_features: int, out_features: int, rows: int, repeats: int = 20, formats: tuple[str, ...] = ("fp32", "bf16")
) -> str:
    """The fastest of `formats` for a (rows, in) x (in, out) linear on this machine (int8 only when asked)."""
    x = torch.randn(rows, in_features)
    fp32 = torch.nn.Linear(in_features, out_features, bias=False).eval()
    builders = {
        "fp32": lambda: (fp32, x),
        "bf16": lambda: (_packed_bf16(torch.nn.Sequential(copy.deepcopy(fp32))), x.to(torch.bfloat16)),
        "int8": lambda: (_quantize_dynamic(torch.nn.Sequential(copy.deepcopy(fp32))), x),
    }
    variants = {name: builders[name]() for name in formats}
    times = {}
    with torch.inference_mode():
        for name, (layer, inp) in variants.items():
            layer(inp)
            start = time.perf_counter()
            for _ in range(repeats):
                layer(inp)
            times[name] = time.perf_counter() - start
    return min(times, key=times.get)


def merged_weights(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's current weights under its base model's names, LoRA merged out of place; a tied weight
    under each of its names (SmolLM2's lm_head is its embedding)."""
    return dict(merged_policy_weights(policy, remove_duplicate=False))


def base_model(policy: torch.nn.Module) -> torch.nn.Module:
    """The architecture the copy is made of: a PEFT policy's base model (with its adapters' layers inside)."""
    return policy.get_base_model() if hasattr(policy, "get_base_model") else policy


class RolloutCopy:
    """The copy of the policy the engine samples with, in `precision`, and its refresh.

    `pack` and `attention_fp32` (bf16 only) exist so the benchmarks can measure the plain bf16 copy beside
    the packed one; both on is what `rollout.precision=bf16` runs.
    """

    def __init__(self, precision: str, pack: bool = True, attention_fp32: bool = True):
        if precision not in PRECISIONS or precision == "auto":
            raise ValueError(f"rollout.precision: got {precision!r}, expected fp32, bf16, int8 or w8")
        self.precision = precision
        self.pack, self.attention_fp32 = pack, attention_fp32
        self.model: torch.nn.Module | None = None
        self.refresh_seconds = 0.0  # the last refresh's wall time

    def _build(self, policy: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A fresh module of the base architecture holding `weights` (no adapters), in the copy's format."""
        base = base_model(policy)
        skeleton = copy.deepcopy(base)
        if hasattr(policy, "get_base_model"):  # PEFT wraps the base's layers: rebuild plain ones
            from peft.tuners.tuners_utils import BaseTunerLayer

            for name, module in list(skeleton.named_modules()):
                if isinstance(module, BaseTunerLayer):
                    parent, _, child = name.rpartition(".")
                    setattr(skeleton.get_submodule(parent) if parent else skeleton, child, module.get_base_layer())
        skeleton.load_state_dict(weights, strict=False)
        skeleton.requires_grad_(False).eval()
        if self.precision == "bf16":
            return _packed_bf16(skeleton, self.pack, self.attention_fp32)
        if self.precision == "w8":
            return _weight_only_int8(skeleton)
        return _quantize_dynamic(skeleton)

    @torch.no_grad()
    def refresh(self, policy: torch.nn.Module) -> torch.nn.Module:
        """The copy, holding the policy's current weights (built on first use)."""
        start = time.perf_counter()
        if self.model is None:
            self.model = self._build(policy, merged_weights(policy))
        else:  # streamed: a LoRA layer's merged weight exists one at a time, never the whole model's
            self._load(merged_policy_weights(policy, remove_duplicate=False))
        self.refresh_seconds = time.perf_counter() - start
        return self.model

    def _load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Each (name, tensor) of the policy's current weights into the copy, in the copy's format."""
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        modules, params = dict(self.model.named_modules()), dict(self.model.named_parameters())
        for name, tensor in weights:
            owner, _, attr = name.rpartition(".")
            module = modules.get(owner)
            if isinstance(module, DynamicLinear):  # packs weight and bias together
                weight = _int8_weight(tensor) if attr == "weight" else module.weight()
                module.set_weight_bias(weight, tensor if attr == "bias" else module.bias())
            elif isinstance(module, (Int8WeightLinear, PackedBf16Linear)) and attr == "weight":
                module.set_weight(tensor)
            elif isinstance(module, (Int8WeightLinear, PackedBf16Linear)) and module.bias is not None:
                module.bias.copy_(tensor)
            elif name in params:
                params[name].copy_(tensor)  # embeddings and norms (and every weight of a plain bf16 copy)


# ---------------------------------------------------------------- fp32, MKL-packed (rollout.prepack_weights)
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
