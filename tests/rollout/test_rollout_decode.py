"""The fast decode loop's pieces: inverse-CDF draws, rollout-sized KV buffers, EOS read back every k steps."""

from __future__ import annotations

import torch

from quark_lightning.rollout import hf_generate
from quark_lightning.rollout.engine import draw
from quark_lightning.rollout.hf_generate import HFGenerateEngine, preallocate_cache
from quark_lightning.rollout.low_precision import prepacked_linears


def test_draw_follows_the_probabilities_and_never_draws_zero():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    picks = torch.stack([draw(probs) for _ in range(4000)])  # (4000, 2)
    freq = torch.bincount(picks[:, 0], minlength=4).float() / len(picks)
    assert torch.allclose(freq, probs[0], atol=0.03), freq
    assert (picks[:, 0] != 1).all() and (picks[:, 1] == 3).all()


def test_draw_takes_unnormalized_rows():
    probs = torch.tensor([[0.0, 2.0, 0.0]])  # e.g. min-p zeroed entries, not renormalized
    assert all(draw(probs).item() == 1 for _ in range(50))


def test_fast_decode_writes_into_preallocated_buffers(tiny_model, bundled_records, monkeypatch):
    model, tok = tiny_model.model, tiny_model.tokenizer
    kinds = []

    def spy(cache, repeats, capacity):
        out = preallocate_cache(cache, repeats, capacity)
        kinds.append({type(layer).__name__ for layer in out.layers})
        return out

    monkeypatch.setattr(hf_generate, "preallocate_cache", spy)
    HFGenerateEngine(max_new_tokens=4).generate(model, tok, bundled_records[:2], 2)
    assert kinds == [{"PreallocatedLayer"}]


def test_shared_prefill_repeats_equal_single_greedy(tiny_model, bundled_records):
    """G greedy copies of a prompt, prefilled once into the buffers, each equal the G=1 (= `generate`) answer."""
    model, tok = tiny_model.model, tiny_model.tokenizer
    one = HFGenerateEngine(max_new_tokens=16).generate(model, tok, bundled_records[:3], 1, greedy=True)
    three = HFGenerateEngine(max_new_tokens=16).generate(model, tok, bundled_records[:3], 3, greedy=True)
    C = one.completion_ids.size(1)
    assert torch.equal(three.completion_ids[:, :C], one.completion_ids.repeat_interleave(3, 0))
    ref = HFGenerateEngine(max_new_tokens=16, decode="generate").generate(
        model, tok, bundled_records[:3], 3, greedy=True
    )
    assert torch.equal(three.completion_ids, ref.completion_ids)


def force_eos_after(model, eos: int, every: int = 7):
    """EOS becomes the greedy choice where (last input token + tokens seen) is divisible by `every`: a
    function of the input alone, so `generate` and the fast loop see the same stops."""

    def hook(module, args, kwargs, output):
        key = kwargs["input_ids"][:, -1] + kwargs["attention_mask"].sum(-1)  # (n,)
        output.logits[key % every == 0, -1, eos] = 1e4
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


def test_eos_read_every_k_steps_gives_the_same_completions(tiny_model, bundled_records):
    """Finished rows that stay in the batch until the next read are masked to pad; nothing else changes."""
    model, tok = tiny_model.model, tiny_model.tokenizer
    handle = force_eos_after(model, tok.eos_token_id)
    try:
        runs = {
            k: HFGenerateEngine(max_new_tokens=12, sync_every=k).generate(
                model, tok, bundled_records[:6], 2, greedy=True
            )
            for k in (1, 4, 100)
        }
        ref = HFGenerateEngine(max_new_tokens=12, decode="generate").generate(
            model, tok, bundled_records[:6], 2, greedy=True
        )
    finally:
        handle.remove()
    lengths = runs[1].completion_mask.sum(1)
    assert (lengths < 12).any() and (lengths > 1).any(), lengths  # rows stop at different steps
    C = runs[1].completion_ids.size(1)
    assert torch.equal(ref.completion_ids, runs[1].completion_ids)
    for k in (4, 100):
        assert torch.equal(runs[k].completion_mask[:, :C], runs[1].completion_mask)
        assert torch.equal(runs[k].completion_ids[:, :C], runs[1].completion_ids)
        assert (runs[k].completion_ids[:, C:] == tok.pad_token_id).all()


def test_prepacked_weights_keep_greedy_and_are_restored(tiny_model, bundled_records):
    model, tok = tiny_model.model, tiny_model.tokenizer
    plain = HFGenerateEngine(max_new_tokens=12).generate(model, tok, bundled_records[:4], 2, greedy=True)
    packed = HFGenerateEngine(max_new_tokens=12, prepack_weights=True).generate(
        model, tok, bundled_records[:4], 2, greedy=True
    )
    assert torch.equal(packed.completion_ids, plain.completion_ids)
    assert not any("forward" in m.__dict__ for m in model.modules())  # the class forwards are back
    layer = model.model.layers[0].mlp.up_proj
    x = torch.randn(8, 1, layer.in_features)
    with torch.inference_mode(), prepacked_linears(model, 8) as on:
        assert on == torch.backends.mkl.is_available()
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-5)
        assert torch.equal(layer(x[:3]), torch.nn.functional.linear(x[:3], layer.weight))  # other row count
