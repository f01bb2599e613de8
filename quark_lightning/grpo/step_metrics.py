"""What one GRPO step reports.

- `StepRecord`: this rank's rows of the step, which the callbacks read (TADW, sample logging, diagnosis).
- `step_metrics`: the logged metrics, with TRL's names where TRL has one; a pure function of what the
  step produced, on the global batch (`infra/distributed.global_step_view` gathers it first).
- `FailureCounter`: the scorer failures per dimension, this step and since the start of the run
  (matrix/alignment_matrix.py says what a failure is).
- `step_diagnostics`: which dimension moved the advantages, and did length? Pure functions of tensors,
  logged every step by GRPOModule (`diagnostics/...` in TensorBoard and metrics.csv), from the step's
  groups (G contiguous completions per prompt; under DDP, this rank's groups):

  within_group_std/<dim>      mean over groups of the dimension's raw within-group std (groups where it
                              applies); 0 means it cannot tell the completions of a prompt apart
  zero_variance_groups/<dim>  share of those groups in which the dimension is constant
  advantage_share/<dim>       Var(c_k) / sum_j Var(c_j), c_k the dimension's group-centred additive
                              contribution to the aggregate: w_k r_k (sum), w_k z_k (rfn, rfn_tadw, with
                              the weights the step used), w_k A_k (gdpo: its per-dimension advantage)
  advantage_length_corr       Pearson correlation of the advantages with completion length (tokens); a
                              large positive value means the rewards mostly pay for length
  length_corr/<dim>           Pearson correlation, within groups, of the dimension's contribution c_k
                              with completion length (both group-centred): which dimension pays for
                              length (NaN where it or the length is constant in every group). The
                              contributions are of the scores aggregated, so a length-controlled
                              dimension reads ~0 (shaping/length_neutral.py); within_group_std and
                              zero_variance_groups stay on the raw scores
  redflag_groups_with_safe    share of red-flag prompts' groups with at least one completion passing
                              `triage` (NaN without red-flag prompts or without a `triage` dimension):
                              a group with none has no triage signal to learn from

The diagnostics' definitions follow the efficacy review (benchmarks/results/efficacy_real.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from quark_lightning.infra.precision import upcast
from quark_lightning.rollout.engine import Rollout
from quark_lightning.shaping.aggregation import centered_within_groups, group_advantages, nanstd


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


class FailureCounter:
    """Per-step and cumulative failure counts of a training run (summed over ranks by GRPOModule), as
    metrics `failures/<dim>` (this step) and `failures_total/<dim>` (since the start of the run; the
    total is in the checkpoint, so it continues after a resume)."""

    def __init__(self, names: Sequence[str]):
        self.step = dict.fromkeys(names, 0)
        self.total = dict.fromkeys(names, 0)

    def record(self, failures: Mapping[str, int]) -> None:
        for name in self.step:
            self.step[name] = int(failures.get(name, 0))
            self.total[name] += self.step[name]

    def metrics(self) -> dict[str, float]:
        out = {f"failures/{name}": float(count) for name, count in self.step.items()}
        out.update({f"failures_total/{name}": float(count) for name, count in self.total.items()})
        return out


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


# ------------------------------------------------------------------------------------------- diagnostics
def contributions(
    aggregator: str,
    scores: torch.Tensor,  # (N, K) the scores aggregated (raw, or length-controlled)
    normalized: torch.Tensor | None,  # (N, K) RFN z, for rfn*
    weights: torch.Tensor,  # (K,) the weights the step used
    group_size: int,
) -> torch.Tensor:
    """(N, K) each dimension's additive contribution to the aggregate before group centring."""
    w = upcast(weights).to(scores.device)
    if aggregator == "gdpo":
        per_dim = torch.stack(
            [group_advantages(upcast(scores[:, k]), group_size).advantages for k in range(scores.size(1))], 1
        )
        return per_dim * w
    base = normalized if normalized is not None else scores
    return torch.nan_to_num(upcast(base), nan=0.0) * w


def advantage_shares(contrib: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K) contributions -> (K,) share of the summed within-group variance (0s when none varies)."""
    var = centered_within_groups(contrib, group_size).pow(2).sum(0)  # (K,)
    total = var.sum()
    return var / total if bool(total > 0) else torch.zeros_like(var)


def length_correlations(contrib: torch.Tensor, lengths: torch.Tensor, group_size: int) -> list[float]:
    """(N, K) contributions, (N,) lengths -> each dimension's within-group correlation with length (K,)."""
    c = centered_within_groups(contrib, group_size)  # (N, K)
    length = centered_within_groups(upcast(lengths).view(-1, 1), group_size)[:, 0]  # (N,)
    return [pearson(c[:, k], length) for k in range(c.size(1))]


def within_group_spread(scores: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) raw -> ((K,) mean within-group std, (K,) share of zero-variance groups), over the groups
    where the dimension applies to at least two completions (NaN where it applies to none)."""
    g = upcast(scores).view(-1, group_size, scores.size(1))  # (P, G, K)
    counts = (~torch.isnan(g)).sum(1)  # (P, K)
    std = torch.stack([nanstd(g[:, :, k], dim=1) for k in range(g.size(2))], 1)  # (P, K)
    applies = counts >= 2
    n = applies.sum(0)  # (K,)
    mean_std = torch.where(applies, std, torch.zeros_like(std)).sum(0) / n.clamp(min=1)
    zero = (applies & (std < 1e-9)).sum(0) / n.clamp(min=1)
    nan = torch.full_like(mean_std, float("nan"))
    return torch.where(n > 0, mean_std, nan), torch.where(n > 0, zero.to(mean_std), nan)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Correlation of two (N,) vectors; NaN when either is constant."""
    x, y = upcast(x).flatten(), upcast(y).flatten()
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float((x * y).sum()) / denom if denom > 1e-12 else float("nan")


def redflag_groups_with_safe(
    prompts: Sequence[dict[str, Any]], triage: torch.Tensor | None, group_size: int
) -> float:
    """Share of red-flag groups with at least one completion scoring >= 1 on `triage` (N,)."""
    if triage is None:
        return float("nan")
    flagged = [bool(prompts[i].get("red_flags")) for i in range(0, len(prompts), group_size)]
    passed = (triage.view(-1, group_size) >= 1.0).any(1).tolist()
    hits = [p for f, p in zip(flagged, passed) if f]
    return sum(hits) / len(hits) if hits else float("nan")


def step_diagnostics(
    names: Sequence[str],
    aggregator: str,
    prompts: Sequence[dict[str, Any]],
    scores: torch.Tensor,  # (N, K) raw
    normalized: torch.Tensor | None,
    weights: torch.Tensor,  # (K,)
    advantages: torch.Tensor,  # (N,)
    lengths: torch.Tensor,  # (N,) completion tokens
    group_size: int,
    inputs: torch.Tensor | None = None,  # (N, K) the scores aggregated when not the raw ones (length control)
) -> dict[str, float]:
    aggregated = inputs if inputs is not None else scores
    contrib = contributions(aggregator, aggregated, normalized, weights, group_size)
    shares = advantage_shares(contrib, group_size)
    by_length = length_correlations(contrib, lengths, group_size)
    spread, zero = within_group_spread(scores, group_size)
    out: dict[str, float] = {}
    for k, name in enumerate(names):
        out[f"diagnostics/within_group_std/{name}"] = float(spread[k])
        out[f"diagnostics/zero_variance_groups/{name}"] = float(zero[k])
        out[f"diagnostics/advantage_share/{name}"] = float(shares[k])
        out[f"diagnostics/length_corr/{name}"] = by_length[k]
    out["diagnostics/advantage_length_corr"] = pearson(advantages, lengths)
    triage = scores[:, list(names).index("triage")] if "triage" in names else None
    out["diagnostics/redflag_groups_with_safe"] = redflag_groups_with_safe(prompts, triage, group_size)
    return out
