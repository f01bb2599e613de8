"""The final `policy/` directory reproduces the trained policy after a warm start or an SFT adapter.

With LoRA, RL trains an adapter on top of the policy it started from. When that start is not the model
that was loaded (a supervised warm start, or `model.adapter_path` merged in), the saved adapter must sit
on that start policy, not on the original base, or loading `policy/` silently drops the SFT weights.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from quark_lightning.models.loading import apply_lora, load_causal_lm
from tests.conftest import REPO


def compose_cfg(tmp_path, model_dir, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        return compose(
            "train",
            [
                "+experiment=smoke",
                f"run_dir={tmp_path / 'run'}",
                "~logger",
                "model=hf",
                f"model.name_or_path={model_dir}",
                f"model.cache_dir={tmp_path / 'cache'}",
                "model.lora.enabled=true",
                "model.lora.r=4",
                "model.lora.alpha=8",
                "model.lora.dropout=0.0",
                "trainer.max_steps=1",
                "algorithm.lr=0.05",  # one step must visibly move the fresh (zero) RL adapter
                "optimization.normalization.calibration_prompts=2",
                "rollout.max_new_tokens=8",
                "callbacks.closed_loop=null",
                "callbacks.samples=null",
                *overrides,
            ],
        )


def chat_inputs(tokenizer):
    msgs = [{"role": "user", "content": "How much paracetamol can an adult take in a day?"}]
    return tokenizer.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def perturb_lora_b(model, std: float = 0.5, seed: int = 0) -> None:
    """Stand-in for a trained adapter: lora_B starts at zero, so a fresh adapter changes nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def train_and_capture(cfg, monkeypatch):
    """run(cfg), keeping the trained GRPOModule that save_outputs received.

    A step or two of GRPO on the tiny model can leave the RL adapter at zero (equal rewards in a group),
    so its lora_B is perturbed just before saving: the saved adapter must count, not only the base.
    """
    import quark_lightning.cli.run as run_mod

    captured = {}
    original = run_mod.save_outputs

    def spy(cfg, trainer, module, tokenizer, logger):
        perturb_lora_b(module.policy, std=0.05, seed=1)
        captured["module"] = module
        return original(cfg, trainer, module, tokenizer, logger)

    monkeypatch.setattr(run_mod, "save_outputs", spy)
    result = run_mod.run(cfg)
    return result, captured["module"]


def sft_adapter(model_dir, out_dir) -> str:
    """A 'trained' SFT LoRA adapter on the tiny base (perturbed lora_B, so it changes the logits)."""
    sft = apply_lora(load_causal_lm(model_dir).model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    perturb_lora_b(sft, std=0.5, seed=0)
    sft.save_pretrained(out_dir)
    return str(out_dir)


@pytest.mark.parametrize("start", ["warmstart", "adapter_path"])
def test_policy_dir_reproduces_the_trained_policy_after_an_sft_start(
    start, tiny_model_dir, tmp_path, monkeypatch
):
    from peft import AutoPeftModelForCausalLM

    if start == "warmstart":  # smoke's supervised warm start, short but strong enough to move the base
        overrides = ["warmstart.steps=3", "warmstart.lr=0.05"]
    else:
        overrides = ["warmstart=none", f"model.adapter_path={sft_adapter(tiny_model_dir, tmp_path / 'sft')}"]
    cfg = compose_cfg(tmp_path, tiny_model_dir, *overrides)
    result, module = train_and_capture(cfg, monkeypatch)
    policy_dir = result["policy_dir"]
    inputs = chat_inputs(module.tokenizer)
    with torch.no_grad():
        trained = module.policy.eval()(**inputs).logits
        with module.policy.disable_adapter():
            start_logits = module.policy(**inputs).logits  # the SFT policy RL started from
        loaded = AutoModelForCausalLM.from_pretrained(policy_dir).eval()(**inputs).logits
        peft_loaded = AutoPeftModelForCausalLM.from_pretrained(policy_dir).eval()(**inputs).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(**inputs).logits
    torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(peft_loaded, trained, rtol=0, atol=1e-5)
    assert float((trained - start_logits).abs().max()) > 1e-3  # the RL adapter counts
    assert float((start_logits - base).abs().max()) > 1e-3  # the SFT start is not the bare base
    assert float((loaded - base).abs().max()) > 1e-3


def lora_policy_on_sft(model_dir, adapter_dir):
    """The policy cli/run.py builds from model.adapter_path: SFT adapter merged, fresh RL adapter on top."""
    from quark_lightning.models.loading import merge_sft_adapter

    loaded = load_causal_lm(model_dir)
    policy = apply_lora(merge_sft_adapter(loaded.model, adapter_dir), r=4, alpha=8, dropout=0.0,
                        target_modules="all-linear")  # fmt: skip
    perturb_lora_b(policy, std=0.05, seed=1)
    return policy.eval(), loaded.tokenizer


def test_save_policy_writes_the_start_policy_as_the_adapters_base(tiny_model_dir, tmp_path):
    import json

    from peft import PeftModel

    from quark_lightning.models.saving import base_state_dict, save_policy

    policy, tok = lora_policy_on_sft(tiny_model_dir, sft_adapter(tiny_model_dir, tmp_path / "sft"))
    inputs = chat_inputs(tok)
    policy_dir = save_policy(policy, tok, str(tmp_path / "policy"), save_base=True)
    config = json.loads((tmp_path / "policy" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "policy" / "base").resolve())
    assert not any("lora" in k for k in base_state_dict(policy.state_dict()))
    with torch.no_grad():
        trained = policy(**inputs).logits
        with policy.disable_adapter():
            start = policy(**inputs).logits
        base = AutoModelForCausalLM.from_pretrained(policy_dir + "/base").eval()
        torch.testing.assert_close(base(**inputs).logits, start, rtol=0, atol=1e-5)  # base/ = the reference
        loaded = AutoModelForCausalLM.from_pretrained(policy_dir).eval()(**inputs).logits
        torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-5)
        reloaded = PeftModel.from_pretrained(base, policy_dir).eval()(**inputs).logits
        torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)
    assert (
        f"base_model: {config['base_model_name_or_path']}" in (tmp_path / "policy" / "README.md").read_text()
    )
    # the in-memory policy keeps its own names
    assert policy.peft_config["default"].base_model_name_or_path == tiny_model_dir
    assert policy.get_base_model().config._name_or_path == tiny_model_dir


def test_save_policy_without_an_sft_start_keeps_the_original_base(tiny_model_dir, tmp_path):
    import json

    from quark_lightning.models.saving import save_policy

    loaded = load_causal_lm(tiny_model_dir)
    policy = apply_lora(loaded.model, r=4, alpha=8, dropout=0.0, target_modules="all-linear").eval()
    perturb_lora_b(policy, std=0.05, seed=1)
    policy_dir = save_policy(policy, loaded.tokenizer, str(tmp_path / "policy"), save_base=False)
    config = json.loads((tmp_path / "policy" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir
    assert not (tmp_path / "policy" / "base").exists()
    inputs = chat_inputs(loaded.tokenizer)
    with torch.no_grad():
        loaded_logits = AutoModelForCausalLM.from_pretrained(policy_dir).eval()(**inputs).logits
        torch.testing.assert_close(loaded_logits, policy(**inputs).logits, rtol=0, atol=1e-5)


def test_save_policy_full_fine_tuning_is_a_plain_model_directory(tiny_model_dir, tmp_path):
    from quark_lightning.models.saving import save_policy

    loaded = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        next(loaded.model.parameters()).add_(0.1)  # "trained"
    policy_dir = save_policy(loaded.model.eval(), loaded.tokenizer, str(tmp_path / "policy"), save_base=True)
    assert not os.path.exists(os.path.join(policy_dir, "adapter_config.json"))
    assert not os.path.exists(os.path.join(policy_dir, "base"))
    inputs = chat_inputs(loaded.tokenizer)
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(policy_dir).eval()(**inputs).logits
        torch.testing.assert_close(got, loaded.model(**inputs).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp2_sharded_lora_policy_saves_from_the_full_state_dict(tiny_model_dir, tmp_path):
    """trainer=fsdp2: the adapter and base/ come from distributed.full_state_dict (2 gloo processes)."""
    import subprocess
    import sys

    adapter = sft_adapter(tiny_model_dir, tmp_path / "sft")
    script = os.path.join(REPO, "tests", "scripts", "fsdp2_save_policy.py")
    proc = subprocess.run([sys.executable, script, tiny_model_dir, adapter, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    expected = torch.load(tmp_path / "expected.pt")
    tok = load_causal_lm(tiny_model_dir).tokenizer
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()(**chat_inputs(tok)).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
