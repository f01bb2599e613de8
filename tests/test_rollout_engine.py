"""Rollout engines: the interface, the fast HF decode path against `generate`, the sampler, optional engines."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from quark_lightning.rollout.engine import RolloutEngine
from quark_lightning.rollout.hf_generate import HFGenerateEngine, sample_next
from tests.conftest import REPO


def test_hf_engine_implements_the_interface():
    assert isinstance(HFGenerateEngine(), RolloutEngine)


def test_fast_greedy_decode_equals_generate(tiny_model, bundled_records):
    model, tok = tiny_model.model, tiny_model.tokenizer
    fast = HFGenerateEngine(max_new_tokens=16, decode="fast").generate(
        model, tok, bundled_records[:3], 1, greedy=True
    )
    ref = HFGenerateEngine(max_new_tokens=16, decode="generate").generate(
        model, tok, bundled_records[:3], 1, greedy=True
    )
    assert torch.equal(fast.completion_ids, ref.completion_ids)
    assert torch.equal(fast.completion_mask, ref.completion_mask)


def test_rows_that_stop_early_leave_the_batch_and_are_padded(tiny_model, bundled_records):
    model, tok = tiny_model.model, tiny_model.tokenizer
    with torch.no_grad():  # make EOS likely so some rows stop early
        model.lm_head.weight[tok.eos_token_id] = 3.0 * model.model.norm.weight
    torch.manual_seed(0)
    for share in (True, False):
        r = HFGenerateEngine(max_new_tokens=12, share_prefill=share).generate(
            model, tok, bundled_records[:2], 4
        )
        lengths = r.completion_mask.sum(1)
        assert r.completion_ids.shape[0] == 8 and (lengths < 12).any()
        assert r.prompts[0] is r.prompts[3] and r.prompts[4]["id"] == bundled_records[1]["id"]
        for row, n in zip(r.completion_ids, lengths.tolist()):
            if n < r.completion_ids.size(1):
                assert row[n - 1] == tok.eos_token_id and (row[n:] == tok.pad_token_id).all()


def test_sampler_warpers():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0]])
    assert sample_next(logits, greedy=True).item() == 2
    assert all(sample_next(logits, top_k=1).item() == 2 for _ in range(20))
    assert all(sample_next(logits, top_p=0.01).item() == 2 for _ in range(20))
    torch.manual_seed(0)
    picks = {sample_next(logits, top_k=2).item() for _ in range(200)}
    assert picks == {2, 3}
    picks = {sample_next(logits, min_p=0.5).item() for _ in range(200)}  # p(3)/p(2) = e^-1 < 0.5
    assert picks == {2}


def test_repetition_penalty_uses_generate(tiny_model):
    assert not HFGenerateEngine(repetition_penalty=1.2).use_fast_path(tiny_model.model)
    assert HFGenerateEngine().use_fast_path(tiny_model.model)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_engine_says_how_to_install():
    from quark_lightning.rollout.vllm_engine import VLLMEngine

    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
        VLLMEngine()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed")
def test_deepspeed_config_fails_early_with_the_fix():
    from quark_lightning.infra.errors import ConfigError
    from quark_lightning.infra.strategies import build_strategy

    cfg = compose_trainer("deepspeed")
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[deepspeed\]'"):
        build_strategy(OmegaConf.to_container(cfg.trainer.strategy))


def compose_trainer(name: str):
    with initialize_config_dir(config_dir=f"{REPO}/conf", version_base=None):
        return compose(config_name="train", overrides=[f"trainer={name}"])


@pytest.mark.parametrize(
    ("name", "strategy_class"),
    [("ddp", None), ("fsdp2", "FSDP2Strategy"), ("fsdp", "FSDPStrategy"), ("multinode", None)],
)
def test_trainer_configs_build_their_strategy(name, strategy_class):
    from quark_lightning.infra.strategies import build_strategy

    cfg = compose_trainer(name)
    strategy = build_strategy(OmegaConf.to_container(cfg.trainer, resolve=True)["strategy"])
    if strategy_class is None:
        assert strategy == "ddp"
    else:
        assert type(strategy).__name__ == strategy_class
    if name == "multinode":
        assert cfg.trainer.num_nodes == 2
