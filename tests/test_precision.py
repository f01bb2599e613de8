"""`trainer.precision=bf16-mixed` on CPU gives the fp32 step within bf16's rounding.

One GRPO step of the tiny model, fp32 (`32-true`) and bf16 autocast (`bf16-mixed`), on the same fixed
completions (the scripted rollout engine of the distributed-equivalence test: a sampled rollout would
differ between precisions and compare nothing). Weights and AdamW state stay fp32 under `bf16-mixed`;
only the forward's matrix multiplies run in bf16 (8 bits of mantissa, relative rounding 2^-8 = 0.4%).

Compared, with the tolerances they get (measured in brackets, this machine, torch 2.13 CPU):
- the policy's linear layers really ran in bf16 under `bf16-mixed` (a forward hook sees bf16 outputs),
  and only fp32 under `32-true`;
- the gradient norm before clipping, the entropy and the reward: relative 2e-2 (grad norm 1.7e-3,
  entropy 8e-8: the log-prob path computes its softmax in fp32). The first step's loss is ~0 in both
  (ratio 1, zero-mean group advantages, KL 0 against the identical reference), so it is compared with an
  absolute 1e-4 and the gradient carries the comparison;
- the parameter update of the step: the first AdamW step moves each weight by lr * g / (|g| + eps), i.e.
  by ~lr in the direction of its gradient's sign, so the updates agree exactly wherever the gradient's
  sign agrees; at least 95% of the updated elements must agree (99.7%), and the largest difference is
  2 lr (a sign flip of a near-zero gradient), never more.
"""

from __future__ import annotations

import importlib.util
import os

import lightning as L
import pytest
import torch

from quark_lightning.data.datamodule import PromptDataModule
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.rubric import RubricScorer
from tests.conftest import REPO

LR = 1e-3


def scripted_engine_class():
    path = os.path.join(REPO, "tests", "scripts", "equivalence_run.py")
    spec = importlib.util.spec_from_file_location("equivalence_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ScriptedEngine


class Capture(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}


def one_step(model_dir: str, records, precision: str):
    torch.manual_seed(0)
    loaded = load_causal_lm(model_dir)
    texts = [r["reference"] for r in records if r.get("reference")]
    matrix = AlignmentMatrix(
        [
            Dimension("format_rules", "format", FormatScorer(min_words=3, max_words=40)),
            Dimension("expert_rubric", "expert", RubricScorer()),
        ]
    )
    config = GRPOConfig(num_generations=4, beta=0.04, lr=LR, max_grad_norm=1e6)  # measured, never clips
    module = GRPOModule(
        loaded.model, loaded.tokenizer, matrix, config, scripted_engine_class()(texts, max_new_tokens=24)
    )
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    linear_dtypes: set[torch.dtype] = set()
    for layer in module.policy.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.register_forward_hook(lambda _m, _i, out: linear_dtypes.add(out.dtype))
    capture = Capture()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[capture],
    )  # fmt: skip
    trainer.fit(module, datamodule=PromptDataModule(path="bundled", prompts_per_step=2, val_fraction=0.0))
    dtypes = {p.dtype for p in module.policy.parameters()}
    update = {n: p.detach() - before[n] for n, p in module.policy.named_parameters()}
    return capture.metrics, update, dtypes, linear_dtypes


@pytest.fixture(scope="module")
def both(tiny_model_dir, bundled_records):
    return {p: one_step(tiny_model_dir, bundled_records, p) for p in ("32-true", "bf16-mixed")}


def test_bf16_mixed_runs_the_matmuls_in_bf16_and_keeps_fp32_weights(both):
    assert both["bf16-mixed"][2] == {torch.float32}  # master weights (and so AdamW state) stay fp32
    assert torch.bfloat16 in both["bf16-mixed"][3]  # autocast was on: the comparison is not vacuous
    assert both["32-true"][3] == {torch.float32}


def test_bf16_mixed_step_metrics_match_fp32(both):
    fp32, bf16 = both["32-true"][0], both["bf16-mixed"][0]
    for key in ("entropy", "grad_norm", "reward"):
        assert bf16[key] == pytest.approx(fp32[key], rel=2e-2), key
    assert bf16["grad_norm"] > 0
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=2e-2, abs=1e-4)


def test_bf16_mixed_update_matches_fp32(both):
    fp32, bf16 = both["32-true"][1], both["bf16-mixed"][1]
    agree = total = 0
    for name, delta in fp32.items():
        moved = delta.abs() > LR / 10
        agree += int((torch.isclose(bf16[name], delta, rtol=1e-3, atol=LR * 1e-2) & moved).sum())
        total += int(moved.sum())
        assert float((bf16[name] - delta).abs().max()) <= 2 * LR * 1.01, name
    assert total > 1000 and agree / total >= 0.95, (agree, total)
