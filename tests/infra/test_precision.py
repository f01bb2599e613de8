"""`trainer.precision=bf16-mixed` on CPU gives the fp32 step within bf16's rounding.

One GRPO step of the tiny model, fp32 (`32-true`) and bf16 autocast (`bf16-mixed`), on the same fixed
completions (the scripted rollout engine of the distributed-equivalence test: a sampled rollout would
differ between precisions and compare nothing). Weights and AdamW state stay fp32 under `bf16-mixed`;
only the forward's matrix multiplies run in bf16 (8 bits of mantissa, relative rounding 2^-8 = 0.4%).

Compared, with the tolerances they get (measured in brackets, this machine, torch 2.13 CPU), each chosen so
that a wrong bf16 path fails it (checked by scaling the bf16 run's loss by 2, by 1.1, and by -1):
- the policy's linear layers really ran in bf16 under `bf16-mixed` (a forward hook sees bf16 outputs),
  and only fp32 under `32-true`;
- the gradient, before clipping and before AdamW normalises it away: relative L2 difference 2e-2 over
  all parameters (2.6e-3, i.e. bf16's rounding) and 5e-2 per tensor (worst 9e-3). A loss scaled by
  1.1 is 0.1 off, by 2 is 1.0 off, a flipped sign is 2.0 off;
- the gradient norm before clipping: relative 2e-2 (3.5e-4), the logged view of the same gradient;
- the entropy: the tiny random model's next-token distribution is near uniform (H ~ log V - 0.007), so
  a relative tolerance on H would hold for any logits near zero; its distance from log V (the part the
  logits decide) must agree within 1% (1.4e-4);
- the reward and the loss do not depend on the precision here (same fixed completions; the first step's
  loss is -A * ratio with ratio exactly 1, zero-mean group advantages and KL 0 against the identical
  reference), so they are asserted equal: a check that both runs trained on the same batch;
- the parameter update of the step: the first AdamW step moves each weight by lr * g / (|g| + eps), i.e.
  by ~lr in the direction of its gradient's sign, which is blind to the gradient's scale (the gradient
  check covers that) but not to its direction: the updates must agree (to 1e-3) on at least 98% of the
  updated elements (99.7%; a flipped gradient sign agrees on 0.1%), and the update difference, which is
  2 lr on each element whose gradient sign differs and ~0 elsewhere, must be under 0.15 of the update's
  norm (0.073, ~2 sqrt(0.16%), 0.16% being the elements whose sign differs; a flipped sign gives 2).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

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


@dataclass
class Step:
    metrics: dict[str, float]
    grad: dict[str, torch.Tensor]  # per parameter, as the optimizer step received it (fp32 master grads)
    update: dict[str, torch.Tensor]  # parameter after the step minus before
    dtypes: set[torch.dtype]  # of the parameters
    linear_dtypes: set[torch.dtype]  # of the linear layers' outputs during the step
    vocab_size: int


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
    grads: list[dict[str, torch.Tensor]] = []
    clip_and_step = module._clip_and_step

    def snapshot_then_step(opt, sched):  # the gradient before clipping and the AdamW step
        grads.append({n: p.grad.detach().clone() for n, p in module.policy.named_parameters()})
        return clip_and_step(opt, sched)

    module._clip_and_step = snapshot_then_step
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
    assert len(grads) == 1  # one optimizer step
    return Step(
        metrics=capture.metrics,
        grad=grads[0],
        update={n: p.detach() - before[n] for n, p in module.policy.named_parameters()},
        dtypes={p.dtype for p in module.policy.parameters()},
        linear_dtypes=linear_dtypes,
        vocab_size=module.policy.config.vocab_size,
    )


@pytest.fixture(scope="module")
def both(tiny_model_dir, bundled_records):
    return {p: one_step(tiny_model_dir, bundled_records, p) for p in ("32-true", "bf16-mixed")}


def test_bf16_mixed_runs_the_matmuls_in_bf16_and_keeps_fp32_weights(both):
    assert both["bf16-mixed"].dtypes == {torch.float32}  # master weights (and so AdamW state) stay fp32
    # autocast was on: the comparison is not vacuous
    assert torch.bfloat16 in both["bf16-mixed"].linear_dtypes
    assert both["32-true"].linear_dtypes == {torch.float32}


def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten().double() for _, t in sorted(tensors.items())])


def test_bf16_mixed_gradient_matches_fp32(both):
    fp32, bf16 = both["32-true"].grad, both["bf16-mixed"].grad
    assert fp32.keys() == bf16.keys()
    g32, g16 = flat(fp32), flat(bf16)
    assert float(g32.norm()) > 0
    assert float((g16 - g32).norm() / g32.norm()) <= 2e-2
    for name, g in fp32.items():
        assert float((bf16[name] - g).norm()) <= 5e-2 * float(g.norm()), name


def test_bf16_mixed_step_metrics_match_fp32(both):
    fp32, bf16 = both["32-true"].metrics, both["bf16-mixed"].metrics
    assert bf16["grad_norm"] > 0
    assert bf16["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=2e-2)
    log_v = math.log(both["32-true"].vocab_size)  # the entropy of the uniform distribution
    assert 0 < log_v - fp32["entropy"]
    assert abs(bf16["entropy"] - fp32["entropy"]) <= 1e-2 * (log_v - fp32["entropy"])
    assert bf16["reward"] == fp32["reward"]  # same completions, same scores
    assert bf16["loss"] == pytest.approx(fp32["loss"], abs=1e-6)  # ~0: ratio 1, zero-mean advantages


def test_bf16_mixed_update_matches_fp32(both):
    fp32, bf16 = both["32-true"].update, both["bf16-mixed"].update
    agree = total = 0
    for name, delta in fp32.items():
        moved = delta.abs() > LR / 10
        agree += int((torch.isclose(bf16[name], delta, rtol=1e-3, atol=LR * 1e-2) & moved).sum())
        total += int(moved.sum())
    assert total > 1000 and agree / total >= 0.98, (agree, total)
    u32, u16 = flat(fp32), flat(bf16)
    assert float((u16 - u32).norm() / u32.norm()) <= 0.15
