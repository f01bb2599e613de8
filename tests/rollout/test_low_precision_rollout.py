"""The low-precision rollout copy (rollout/low_precision.py): it holds the policy's weights in its format,
follows them after an optimizer step, merges LoRA without touching the policy, and is refused where it
cannot serve."""

from __future__ import annotations

import pytest
import torch

from quark_lightning.infra.errors import ConfigError
from quark_lightning.models.loading import apply_lora, load_causal_lm
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.rollout.low_precision import RolloutCopy, merged_weights, pick_precision


def _dequantized(copy_model) -> dict[str, torch.Tensor]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {f"{n}.weight": m.weight().dequantize() for n, m in copy_model.named_modules() if isinstance(m, DynamicLinear)}


def _step_and_refresh(copy: RolloutCopy, policy, x):
    """One SGD step on the policy, then the copy refreshed: (the refreshed copy, its logits before the step,
    a copy built fresh from the stepped policy)."""
    before = copy.model(input_ids=x).logits.clone()
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    policy(input_ids=x, labels=x).loss.backward()
    opt.step()
    return copy.refresh(policy), before, RolloutCopy(copy.precision).refresh(policy)


def test_the_int8_copy_holds_the_policys_weights_and_follows_an_optimizer_step(tiny_model_dir, bundled_records):
    policy = load_causal_lm(tiny_model_dir).model
    copy = RolloutCopy("int8")
    model = copy.refresh(policy)
    weights = merged_weights(policy)
    linears = _dequantized(model)
    assert linears and all(  # int8 per tensor: within half a quantization step of the fp32 weight
        (linears[n] - weights[n]).abs().max() <= weights[n].abs().max() / 127.5 / 2 + 1e-7 for n in linears
    )
    assert any("lm_head" in n for n in linears)  # the tied head is quantized from the embedding it shares

    x = torch.tensor([[1, 2, 3, 4]])
    again, before, fresh = _step_and_refresh(copy, policy, x)
    assert again is model  # refreshed in place, not rebuilt
    assert not torch.allclose(again(input_ids=x).logits, before)  # its output moved with the weights
    assert torch.allclose(again(input_ids=x).logits, fresh(input_ids=x).logits, atol=1e-5)
    assert copy.refresh_seconds > 0


def test_the_weight_only_int8_copy_keeps_the_distribution_and_follows_an_optimizer_step(tiny_model_dir):
    from quark_lightning.rollout.low_precision import Int8WeightLinear

    policy = load_causal_lm(tiny_model_dir).model
    copy = RolloutCopy("w8")
    model = copy.refresh(policy)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Int8WeightLinear)}
    weights = merged_weights(policy)
    assert "lm_head" in layers  # the tied head too
    for name, layer in layers.items():  # per output row: half a step, plus the bf16 rounding of its scale
        w = weights[f"{name}.weight"]
        step = w.abs().amax(1, keepdim=True) / 127  # (out, 1) the row's quantization step
        restored = layer.weight_int8.float() * layer.scales.float()[:, None]
        assert ((restored - w).abs() <= step * (0.5 + 127 / 256) + 1e-6).all()
    x = torch.tensor([[1, 2, 3, 4]])
    ref = torch.log_softmax(policy(input_ids=x).logits, -1)
    got = torch.log_softmax(model(input_ids=x).logits.float(), -1)
    assert float((ref.exp() * (ref - got)).sum(-1).max()) < 0.05  # the activations are never quantized
    again, before, fresh = _step_and_refresh(copy, policy, x)  # fresh: a copy of the stepped policy
    assert again is model and not torch.allclose(again(input_ids=x).logits, before)  # it followed the step
    assert torch.equal(again(input_ids=x).logits, fresh(input_ids=x).logits)


def test_a_lora_policy_is_merged_into_the_copy_and_left_untouched(tiny_model_dir):
    policy = apply_lora(load_causal_lm(tiny_model_dir).model, 4, 8, 0.0, "all-linear")
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter (B starts at 0)
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    copy = RolloutCopy("bf16").refresh(policy)
    x = torch.tensor([[1, 2, 3, 4]])
    expected = policy(input_ids=x).logits
    assert torch.allclose(copy(input_ids=x).logits.float(), expected, atol=0.05 * float(expected.abs().max()))
    with policy.disable_adapter():  # the base (the reference) differs: the adapter is in the copy
        assert not torch.allclose(copy(input_ids=x).logits.float(), policy(input_ids=x).logits, atol=1e-3)
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in state.items())  # policy untouched
    assert not any("lora" in n for n, _ in copy.named_parameters())


def test_the_engine_samples_from_the_copy_and_answers_greedy_with_the_policy(tiny_model_dir, bundled_records):
    loaded = load_causal_lm(tiny_model_dir)
    engine = HFGenerateEngine(max_new_tokens=6, precision="int8")
    torch.manual_seed(0)
    rollout = engine.generate(loaded.model, loaded.tokenizer, bundled_records[:2], 2)
    assert engine.rollout_copy is not None and rollout.sampling_logp is not None
    assert engine.step_metrics()["time/rollout_refresh"] == engine.rollout_copy.refresh_seconds > 0
    assert HFGenerateEngine().step_metrics() == {}  # fp32: no copy, nothing to log
    greedy = engine.generate(loaded.model, loaded.tokenizer, bundled_records[:2], 1, greedy=True)
    plain = HFGenerateEngine(max_new_tokens=6).generate(loaded.model, loaded.tokenizer, bundled_records[:2], 1, greedy=True)
    assert greedy.completions == plain.completions  # evaluation measures the policy, not its copy


def test_auto_picks_one_of_the_formats_and_bad_settings_are_refused(tiny_model_dir, bundled_records):
    assert pick_precision(64, 128, rows=8, repeats=2) in ("fp32", "bf16")  # auto keeps the distribution
    assert pick_precision(64, 128, rows=8, repeats=2, formats=("fp32", "bf16", "int8")) in ("fp32", "bf16", "int8")
    with pytest.raises(ConfigError, match="rollout.precision: got 'int4'"):
        HFGenerateEngine(precision="int4")
    loaded = load_causal_lm(tiny_model_dir)
    engine = HFGenerateEngine(max_new_tokens=4, precision="int8", decode="generate")
    with pytest.raises(ConfigError, match="rollout.precision=int8 is a CPU rollout copy.*Fix: rollout.precision=fp32"):
        engine.generate(loaded.model, loaded.tokenizer, bundled_records[:1], 2)


def test_the_packed_bf16_linear_equals_f_linear_for_any_row_count():
    from quark_lightning.rollout.low_precision import PackedBf16Linear, onednn_bf16

    if not onednn_bf16():
        pytest.skip("this CPU build has no oneDNN bf16")
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32), torch.randn(48)
    layer = PackedBf16Linear(weight, bias, rows=8)
    for shape in [(8, 32), (8, 1, 32), (3, 7, 32), (1, 32)]:  # the decode's rows, the prefill's, others
        x = torch.randn(*shape)
        expected = torch.nn.functional.linear(x.bfloat16(), weight.bfloat16(), bias.bfloat16())
        assert torch.equal(layer(x), expected)
    layer.set_weight(2 * weight, bias)  # a refresh repacks
    assert torch.equal(layer(x), torch.nn.functional.linear(x.bfloat16(), (2 * weight).bfloat16(), bias.bfloat16()))


def test_the_bf16_copy_packs_its_linears_attends_in_fp32_and_follows_an_optimizer_step(tiny_model_dir):
    from quark_lightning.rollout.low_precision import FP32_ATTENTION, PackedBf16Linear, onednn_bf16

    if not onednn_bf16():
        pytest.skip("this CPU build has no oneDNN bf16")
    policy = load_causal_lm(tiny_model_dir).model
    attention = policy.config._attn_implementation
    copy = RolloutCopy("bf16")
    model = copy.refresh(policy)
    packed = {n for n, m in model.named_modules() if isinstance(m, PackedBf16Linear)}
    assert "lm_head" in packed and len(packed) == sum(type(m) is torch.nn.Linear for m in policy.modules())
    assert model.config._attn_implementation == FP32_ATTENTION
    assert policy.config._attn_implementation == attention  # the policy (the trainer) is untouched
    plain = RolloutCopy("bf16", pack=False, attention_fp32=False).refresh(policy)
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    expected = policy(input_ids=x).logits
    for logits in (model(input_ids=x).logits, plain(input_ids=x).logits):  # both the policy up to bf16
        assert torch.allclose(logits.float(), expected, atol=0.05 * float(expected.abs().max()))

    again, before, fresh = _step_and_refresh(copy, policy, x)
    assert again is model and not torch.equal(again(input_ids=x).logits, before)  # repacked from the step
    assert torch.equal(again(input_ids=x).logits, fresh(input_ids=x).logits)


def test_attention_in_fp32_is_sdpa_on_upcast_inputs():
    from quark_lightning.rollout.low_precision import _sdpa_in_fp32

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 8).bfloat16() for n in (1, 5, 5))  # (B, heads, T, D), one query token
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = False, 1
    out, _ = _sdpa_in_fp32(module, q, k, v, None, scaling=8**-0.5)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=8**-0.5)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1, 4, 8)  # transformers' (B, T, heads, D)
    assert torch.equal(out, expected.transpose(1, 2).bfloat16())


@pytest.mark.parametrize("precision", ["bf16", "w8", "int8"])
def test_a_refresh_streams_weights_and_biases_into_every_format(precision):
    torch.manual_seed(0)
    policy = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    copy = RolloutCopy(precision)
    model = copy.refresh(policy)
    x = torch.randn(4, 16)
    before = model(x).float()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # weights and biases both move
    assert copy.refresh(policy) is model  # refreshed in place
    fresh = RolloutCopy(precision).refresh(policy)
    assert torch.equal(model(x), fresh(x)) and not torch.equal(model(x).float(), before)
