"""ORM: the trained scalar reward model as a matrix dimension (`correctness_macro`, or the online RM).

Loads a directory written by `python train.py +experiment=rm_orm` (or `rm_online`), i.e.
`<run_dir>/reward_model`, with `ScalarRewardModel.from_pretrained`. The model is frozen and in eval mode
and is exposed as `self.model` (an nn.Module): the GRPO module registers it beside the policy, so it
moves to the policy's device and is never in the optimizer. (question, answer) is rendered with the
reward model's own chat template, exactly as in its training.

Backbone of a reward model trained on demand (`train_experiment`): `backbone: tiny` (the tiny model
built in code; the demo's default) or `backbone: policy` (`policy_model`, the run's `model` group, e.g.
model=smollm2: by default a frozen backbone with a trained head, see reward_model/rm_backbone.py). The cache
key includes the backbone, so tiny and policy reward models never collide. A policy-backbone reward model
costs a forward of that model per scored answer (benchmarks/results/rm_backbones.md).

Scores are the raw scalar rewards (Bradley–Terry logits, unbounded, comparable within one reward
model only); the unified optimization (Reference-Frozen Normalization) puts them on a common scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quark_lightning.reward_model.scalar_rm import ScalarRewardModel
from quark_lightning.scorers.interface import ScoreResult


class ORMScorer:
    def __init__(
        self,
        path: str | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        dtype: str = "float32",
        train_experiment: str | None = None,
        cache_dir: str | None = None,
        backbone: str | None = None,
        policy_model: Any = None,
        train_overrides: Sequence[str] | None = None,
    ):
        """`path`: a saved reward-model directory. Or leave it null and name `train_experiment` (e.g.
        `rm_orm`): that reward model is trained once on its bundled data and cached under `cache_dir`,
        on `backbone` (tiny | policy; null = the experiment's reward_model.backbone) where `policy` is
        `policy_model` (a model config, `${model}` in a matrix), with `train_overrides` (Hydra overrides
        of that experiment, e.g. [reward_model.pooling=mean]). All three are ignored when `path` is set."""
        if path is None:
            if not train_experiment:
                raise ValueError(
                    "ORMScorer needs `path` (a directory saved by `python train.py +experiment=rm_orm`) "
                    "or `train_experiment` (e.g. rm_orm) to train and cache one"
                )
            from quark_lightning.reward_model.rm_cache import ensure_reward_model

            path = ensure_reward_model(
                train_experiment,
                cache_dir,
                [str(o) for o in train_overrides or []],
                backbone=backbone,
                model=policy_model,
            )
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
