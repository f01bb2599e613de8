"""A few real GRPO steps: trainable policy parameters move; reference and reward parameters do not."""

import lightning as L
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from quark_lightning.data.datamodule import PromptDataModule
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.models.loading import apply_lora, load_causal_lm
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.hf_reward_model import HFRewardModelScorer
from quark_lightning.scorers.rubric import RubricScorer
from tests.conftest import on_devices


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir):
    """A scalar reward model (sequence classification, 1 label) saved with save_pretrained."""
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_config(config)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def make_matrix(reward_model_dir):
    return AlignmentMatrix(
        [
            Dimension("format_rules", "format", FormatScorer(min_words=3, max_words=40)),
            Dimension("expert_rubric", "expert", RubricScorer()),
            Dimension("learned_rm", "fundamental", HFRewardModelScorer(reward_model_dir)),
        ]
    )


def fit(module, steps=3, accelerator="cpu"):
    dm = PromptDataModule(path="bundled", prompts_per_step=2, val_fraction=0.0)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def snapshot(named_params):
    return {n: p.detach().cpu().clone() for n, p in named_params}


@pytest.mark.parametrize("accelerator", on_devices())
def test_full_finetune_moves_policy_only(tiny_model_dir, reward_model_dir, accelerator):
    torch.manual_seed(0)
    loaded = load_causal_lm(tiny_model_dir)
    cfg = GRPOConfig(num_generations=4, beta=0.04, lr=1e-2, num_iterations=2, max_grad_norm=1.0)
    module = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        make_matrix(reward_model_dir),
        cfg,
        HFGenerateEngine(max_new_tokens=12),
    )
    policy0 = snapshot(module.policy.named_parameters())
    ref0 = snapshot(module.reference.named_parameters())
    rm0 = snapshot(module.reward_models.named_parameters())
    assert ref0 and rm0
    trainer = fit(module, steps=4, accelerator=accelerator)
    assert trainer.global_step == 4  # optimizer steps: 2 rollouts x num_iterations 2
    unchanged = [n for n, p in module.policy.named_parameters() if torch.equal(p.cpu(), policy0[n])]
    assert unchanged == [], f"trainable parameters that did not move: {unchanged}"
    for n, p in module.reference.named_parameters():
        assert torch.equal(p.cpu(), ref0[n]) and not p.requires_grad, n
    for n, p in module.reward_models.named_parameters():
        assert torch.equal(p.cpu(), rm0[n]) and not p.requires_grad, n
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in module.policy.parameters()}
    record = module.last_step
    assert record.scores.shape == (2 * 4, 3) and len(record.completions) == 8


def test_lora_moves_only_the_adapter(tiny_model_dir, reward_model_dir):
    torch.manual_seed(0)
    loaded = load_causal_lm(tiny_model_dir)
    policy = apply_lora(loaded.model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    cfg = GRPOConfig(num_generations=4, beta=0.04, lr=1e-2)
    module = GRPOModule(
        policy, loaded.tokenizer, make_matrix(reward_model_dir), cfg, HFGenerateEngine(max_new_tokens=12)
    )
    before = snapshot(module.policy.named_parameters())
    fit(module, steps=2)
    for n, p in module.policy.named_parameters():
        if p.requires_grad:
            assert "lora_" in n and not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), f"frozen base parameter {n} changed"


def test_reward_model_scorer_scores_a_batch(reward_model_dir):
    scorer = HFRewardModelScorer(reward_model_dir)
    prompt = {"id": "x", "messages": [{"role": "user", "content": "Is 150/95 high?"}]}
    out = scorer.score([prompt, prompt], ["Yes, see your doctor.", "No."])
    assert out.scores.shape == (2,) and torch.isfinite(out.scores).all()
    assert out.scores[0] != out.scores[1]
