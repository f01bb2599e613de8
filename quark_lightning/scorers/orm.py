"""ORM: the trained scalar reward model as a matrix dimension (`correctness_macro`, or the online RM).

Loads a directory written by `python train.py +experiment=rm_orm` (or `rm_online`), i.e.
`<run_dir>/reward_model`, with `ScalarRewardModel.from_pretrained`. The model is frozen and in eval mode
and is exposed as `self.model` (an nn.Module): the GRPO module registers it beside the policy, so it
moves to the policy's device and is never in the optimizer. (question, answer) is rendered with the
reward model's own chat template, exactly as in its training.

A reward model that does not exist yet is named in the matrix config instead of `path`
(`train_experiment`, `backbone`, `policy_model`, `train_overrides`, `cache_dir`): the matrix builder trains
it once and caches it before this scorer is built (reward_model/rm_cache.py `resolved_scorer_config`), so
the scorer only ever loads a saved directory. `backbone: tiny` is the tiny model built in code (the demo's
default), `backbone: policy` the run's `model` group with a frozen backbone and a trained head
(reward_model/rm_backbone.py); it costs a forward of that model per scored answer
(benchmarks/results/rm_backbones.md).

Scores are the raw scalar rewards (Bradley–Terry logits, unbounded, comparable within one reward
model only); the unified optimization (Reference-Frozen Normalization) puts them on a common scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quark_lightning.reward_model.scalar_rm import ScalarRewardModel
from quark_lightning.scorers.interface import ScoreResult


class ORMScorer:
    # config keys the matrix builder consumes before building this scorer (reward_model/rm_cache.py
    # `resolved_scorer_config`): they name a reward model to train once instead of a saved `path`
    BUILD_KEYS = ("train_experiment", "cache_dir", "backbone", "policy_model", "train_overrides")

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 512, dtype: str = "float32"):
        """`path`: a saved reward-model directory (`<run_dir>/reward_model`)."""
        self.path = path
        self.model = ScalarRewardModel.from_pretrained(path, dtype=dtype)
        self.model.requires_grad_(False).eval()
        self.batch_size, self.max_length = batch_size, max_length

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        scores = self.model.score(
            [p.get("messages", []) for p in prompts],
            list(completions),
            batch_size=self.batch_size,
            max_length=self.max_length,
        )  # (N,)
        findings = [[f"reward model score {s:.2f}"] for s in scores.tolist()]
        return ScoreResult(scores=scores.float(), findings=findings)
