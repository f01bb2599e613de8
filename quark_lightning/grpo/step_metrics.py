"""What one GRPO step reports: `StepRecord`, this rank's rows of the step, which the callbacks read (TADW,
sample logging, diagnosis), and `step_metrics`, the logged metrics with TRL's names where TRL has one, a
pure function of what the step produced (on the global batch: `infra/distributed.global_step_view`
gathers it first)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from quark_lightning.rollout.engine import Rollout
from quark_lightning.shaping.aggregation import nanstd


@dataclass
class StepRecord:
    """What the last step produced; callbacks read it (sample logging, diagnosis)."""

    step: int
    prompts: list[dict[str, Any]]
    completions: list[str]
    scores: torch.Tensor  # (N, K) raw
    normalized: torch.Tensor | None  # (N, K) in RFN units, when the aggregator normalizes
    reward: torch.Tensor  # (N,)
    advantages: torch.Tensor  # (N,)
    findings: dict[str, list[list[str]]] = field(default_factory=dict)
    weights: torch.Tensor | None = None  # (K,) the weights this step aggregated with
    lengths: torch.Tensor | None = None  # (N,) completion tokens
    inputs: torch.Tensor | None = None  # (N, K) the scores aggregated, when adjusted (length control)

    @classmethod
    def of(cls, step: int, rollout, scores, aggregated, advantages, weights, findings) -> StepRecord:
        """This rank's rows of a step, detached, on the CPU."""
        normalized = aggregated.normalized
        return cls(
            step=step,
            prompts=rollout.prompts,
            completions=rollout.completions,
            scores=scores.detach().cpu(),
            normalized=normalized.detach().cpu() if normalized is not None else None,
            reward=aggregated.reward.detach().cpu(),
            advantages=advantages.detach().cpu(),
            weights=weights.detach().cpu(),
            lengths=rollout.completion_mask.sum(1).detach().cpu().float(),
            findings=findings,
            inputs=aggregated.inputs.detach().cpu() if aggregated.inputs is not None else None,
        )


def _nanmean(col: torch.Tensor, empty: float = float("nan")) -> float:
    return float(torch.nanmean(col)) if not torch.isnan(col).all() else empty


def step_metrics(
    names: list[str],
    rollout: Rollout,
    scores: torch.Tensor,  # (N, K) raw
    aggregated,  # AggregatedReward: reward (N,), normalized (N, K) or None
    weights: torch.Tensor,  # (K,) the weights the next step aggregates with
    frac_zero_std: float,
    stats: dict[str, float],  # the policy update's statistics
    times: tuple[float, float, float, float, float],  # start, generated, scored, reference done, end
    group_size: int,
    lr: float,
) -> dict[str, float]:
    t0, t_gen, t_score, t_ref, t_end = times
    metrics: dict[str, float] = {}
    for k, name in enumerate(names):
        metrics[f"rewards/{name}/mean"] = _nanmean(scores[:, k])
        metrics[f"rewards/{name}/std"] = float(nanstd(scores[:, k]))
    for k, name in enumerate(names):
        metrics[f"weights/{name}"] = float(weights[k])
    reward = aggregated.reward
    metrics["reward"] = _nanmean(reward)
    metrics["reward_std"] = float(nanstd(reward.view(-1, group_size), dim=1).mean())
    metrics["frac_reward_zero_std"] = float(frac_zero_std)
    if aggregated.normalized is not None:
        for k, name in enumerate(names):
            metrics[f"normalized/{name}/mean"] = _nanmean(aggregated.normalized[:, k], empty=0.0)
    metrics |= {key: stats[key] for key in ("kl", "entropy", "loss", "grad_norm")}
    metrics |= {key: v for key, v in stats.items() if key.startswith("sampling/")}  # grpo/loss.py: correction_stats
    for side in ("low", "high", "region"):
        metrics[f"clip_ratio/{side}_mean"] = stats[f"clip_{side}"]
    lengths = rollout.completion_mask.sum(1).float()
    metrics["completions/mean_length"] = float(lengths.mean())
    metrics["completions/min_length"] = float(lengths.min())
    metrics["completions/max_length"] = float(lengths.max())
    metrics["completions/clipped_ratio"] = float(rollout.truncated.float().mean())
    metrics["prompts/truncated_ratio"] = float(rollout.prompt_truncated.float().mean())
    metrics["num_tokens"] = float(rollout.attention_mask.sum())
    metrics["step_time"] = t_end - t0
    metrics["time/generation"] = t_gen - t0
    metrics["time/scoring"] = t_score - t_gen
    metrics["time/reference"] = t_ref - t_score
    metrics["time/policy"] = t_end - t_ref
    metrics["lr"] = lr
    return metrics
