"""Aggregation: the matrix's (N, K) raw scores -> one scalar reward (and advantages) per completion.

Chosen with `optimization=NAME` (config key `optimization.aggregator`):

  sum       TRL's `sum_then_normalize`: reward = nansum_k w_k r_k (static weights), then GRPO group
            normalization of that reward.
  gdpo      TRL's `normalize_then_sum` (GDPO): per dimension, group-normalize r_k within each prompt's G
            completions; A = nansum_k w_k A_k; then normalize A over the batch (mean 0, unbiased std,
            eps 1e-4). Advantages come from here directly; the logged reward is the weighted raw sum,
            as in TRL.
  rfn       Reference-Frozen Normalization with static weights: z = RFN(r) (shaping/rfn.py),
            reward = nansum_k w_k z_k, then GRPO group normalization.
  rfn_tadw  The full method: as `rfn`, with the weights w set every step by Tri-Factor Adaptive Dynamic
            Weighting (shaping/tadw.py, run by callbacks/weighting.py), renormalized each step over
            the dimensions that vary inside at least one group (the others get exactly 0).

In every aggregator a NaN score (dimension does not apply) contributes 0, and a completion no dimension
applies to gets a NaN reward, hence advantage 0. `weighted_sum` is kept as an alias of `sum`.

A score whose scorer *failed* (matrix/alignment_matrix.py) is NaN too, so outside gates it counts as "does not
apply". Gates are told apart by the `failed` mask: a failed sample on a gate dimension is vetoed
(`gate.on_failure: veto`, the default) or excluded from learning (`exclude`: reward NaN, advantage 0);
it never passes the gate as if it were safe.

Advantages (`group_advantages`): group-relative advantages, with TRL GRPOTrainer semantics (docs/design.md section 4).

For rewards r of shape (N,), N = num_prompts * G with the G completions of a prompt contiguous:

    mean_g = nanmean over the G completions of the prompt
    std    = unbiased nanstd over the group ("group"), over the whole batch ("batch"), or 1 ("none")
    A      = (r - mean_g) / (std + 1e-4)            ("none": A = r - mean_g, the Dr. GRPO choice)
    A[r is NaN] = 0                                  (completions no dimension applies to)

A group with fewer than two scored completions has std 0 (not NaN), so its advantages are 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from quark_lightning.infra.precision import upcast

SCALE_MODES = ("group", "batch", "none")


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaN; 0 where fewer than two values are present."""
    valid = ~torch.isnan(x)
    count = valid.sum(dim=dim, keepdim=True) if dim is not None else valid.sum()
    mean = torch.nanmean(x, dim=dim, keepdim=True) if dim is not None else torch.nanmean(x)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    total = sq.sum(dim=dim, keepdim=True) if dim is not None else sq.sum()
    var = torch.where(count > 1, total / (count - 1).clamp(min=1), torch.zeros_like(total))
    std = var.sqrt()
    if dim is not None and not keepdim:
        std = std.squeeze(dim)
    return std


@dataclass
class Advantages:
    advantages: torch.Tensor  # (N,)
    group_std: torch.Tensor  # (N,) the std each completion was divided by (before epsilon)
    frac_zero_std: torch.Tensor  # scalar, share of completions in groups whose reward std is ~0


def group_advantages(
    rewards: torch.Tensor,  # (N,)
    group_size: int,
    scale: str = "group",
    eps: float = 1e-4,
) -> Advantages:
    if scale not in SCALE_MODES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALE_MODES}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # (P, G)
    all_nan = torch.isnan(grouped).all(dim=1, keepdim=True)  # (P, 1)
    mean_g = torch.where(all_nan, torch.zeros_like(grouped[:, :1]), torch.nanmean(grouped, 1, keepdim=True))
    std_g = nanstd(grouped, dim=1, keepdim=True).expand_as(grouped)  # (P, G)
    centered = grouped - mean_g  # (P, G)
    if scale == "group":
        std = std_g
    elif scale == "batch":
        std = nanstd(rewards).expand_as(grouped)
    else:
        std = torch.ones_like(grouped)
    adv = centered if scale == "none" else centered / (std + eps)
    adv = torch.nan_to_num(adv, nan=0.0).reshape(-1)
    frac_zero = (std_g < 1e-6).float().mean()
    return Advantages(advantages=adv, group_std=std.reshape(-1), frac_zero_std=frac_zero)


# ---------------------------------------------------------------- within-group structure
def centered_within_groups(z: torch.Tensor, group_size: int) -> torch.Tensor:
    """z minus its group's mean per dimension, NaN read as 0 (a group's G rows are contiguous): what
    moves the group-relative advantage, without the between-prompt variation.  (N, K) -> (N, K)"""
    g = upcast(z).view(-1, group_size, z.size(1))  # (P, G, K)
    mean = torch.nan_to_num(torch.nanmean(g, 1, keepdim=True), nan=0.0)
    return torch.nan_to_num(g - mean, nan=0.0).reshape(z.shape)


def varies_within_groups(z: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """(N, K) -> (K,) bool: the dimension has two scored values differing by more than `tol` inside at
    least one group. A dimension that does not apply, or is constant in every group, cannot move an
    advantage."""
    g = upcast(z).view(-1, group_size, z.size(1))  # (P, G, K)
    scored = ~torch.isnan(g)
    hi = torch.where(scored, g, torch.full_like(g, -float("inf"))).max(1).values  # (P, K)
    lo = torch.where(scored, g, torch.full_like(g, float("inf"))).min(1).values
    return ((hi - lo) > tol).any(0)


def active_weights(weights: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """The weights renormalized over the active dimensions, exactly 0 elsewhere (unchanged when none is
    active: then no dimension can move an advantage anyway).  (K,), (K,) bool -> (K,)"""
    kept = torch.where(active, weights, torch.zeros_like(weights))
    total = kept.sum()
    return kept * (weights.sum() / total) if bool(total > 0) else weights


@dataclass
class AggregationContext:
    group_size: int
    prompt_ids: Sequence[str] | None = None
    normalizer: Callable | None = None  # ReferenceFrozenNormalizer for rfn / rfn_tadw
    eps: float = 1e-4
    lengths: torch.Tensor | None = None  # (N,) completion tokens, for length-decoupled RFN


@dataclass
class AggregatedReward:
    reward: torch.Tensor  # (N,) the scalar reward (logged as `reward`)
    advantages: torch.Tensor | None = None  # (N,) when the aggregator computes advantages itself
    normalized: torch.Tensor | None = None  # (N, K) normalized scores (RFN units), when it has them
    weights: torch.Tensor | None = None  # (K,) the weights this step used, when they differ from the given
    inputs: torch.Tensor | None = None  # (N, K) the scores combined, when not the raw ones (length control)

    def rows(self, rows: slice) -> AggregatedReward:
        """These rows of a gathered batch (the weights are the batch's)."""
        pick = lambda t: t[rows] if t is not None else None  # noqa: E731
        return AggregatedReward(
            pick(self.reward), pick(self.advantages), pick(self.normalized), self.weights, pick(self.inputs)
        )


def weighted_sum(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """nansum_k w_k * r_k; rows where every dimension is NaN stay NaN.  (N, K), (K,) -> (N,)"""
    if scores.dim() != 2 or scores.size(1) != weights.numel():
        raise ValueError(f"scores {tuple(scores.shape)} and weights {tuple(weights.shape)} do not match")
    reward = torch.nansum(scores * weights.to(scores), dim=1)  # (N,)
    return torch.where(torch.isnan(scores).all(dim=1), torch.full_like(reward, float("nan")), reward)


def sum_then_normalize(
    scores: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext
) -> AggregatedReward:
    return AggregatedReward(reward=weighted_sum(scores, weights))


def gdpo(scores: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext) -> AggregatedReward:
    per_dim = torch.stack(
        [
            group_advantages(scores[:, k], ctx.group_size, "group", ctx.eps).advantages
            for k in range(scores.size(1))
        ],
        dim=1,
    )  # (N, K), NaN scores -> 0
    adv = (per_dim * weights.to(per_dim)).sum(1)  # (N,)
    adv = (adv - adv.mean()) / (nanstd(adv) + ctx.eps)
    return AggregatedReward(reward=weighted_sum(scores, weights), advantages=adv)


def reference_frozen(
    scores: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext
) -> AggregatedReward:
    if ctx.normalizer is None:
        raise ValueError("the rfn aggregators need a ReferenceFrozenNormalizer")
    z = ctx.normalizer(scores, ctx.prompt_ids, ctx.lengths)  # (N, K)
    return AggregatedReward(reward=weighted_sum(z, weights), normalized=z)


def reference_frozen_active(
    scores: torch.Tensor, weights: torch.Tensor, ctx: AggregationContext
) -> AggregatedReward:
    """`rfn` with the weights renormalized over the dimensions that vary inside at least one group of
    the batch: one that does not apply, or is constant in every group, gets exactly 0 this step."""
    agg = reference_frozen(scores, weights, ctx)
    w = active_weights(weights.to(agg.normalized), varies_within_groups(agg.normalized, ctx.group_size))
    return AggregatedReward(reward=weighted_sum(agg.normalized, w), normalized=agg.normalized, weights=w)


Aggregator = Callable[[torch.Tensor, torch.Tensor, AggregationContext], AggregatedReward]


@dataclass(frozen=True)
class AggregatorSpec:
    """A registry entry: the function and the properties the rest of the code asks about."""

    fn: Aggregator
    needs_normalizer: bool = False  # RFN statistics, calibrated by the reward-rescaling callback
    adaptive_weights: bool = False  # weights set every step by TADW (the weighting callback)
    batch_statistics: bool = False  # statistics over the whole (all-rank) batch: gather before aggregating


AGGREGATORS: dict[str, AggregatorSpec] = {
    "sum": AggregatorSpec(sum_then_normalize),
    "weighted_sum": AggregatorSpec(sum_then_normalize),
    "gdpo": AggregatorSpec(gdpo, batch_statistics=True),
    "rfn": AggregatorSpec(reference_frozen, needs_normalizer=True),
    # the active dimensions are a statistic of the whole batch: aggregate the gathered batch under DDP
    "rfn_tadw": AggregatorSpec(
        reference_frozen_active, needs_normalizer=True, adaptive_weights=True, batch_statistics=True
    ),
}


def aggregator_spec(name: str) -> AggregatorSpec:
    if name not in AGGREGATORS:
        raise KeyError(
            f"optimization.aggregator: unknown aggregator {name!r}; expected one of {sorted(AGGREGATORS)}"
        )
    return AGGREGATORS[name]


def get_aggregator(name: str) -> Aggregator:
    return aggregator_spec(name).fn


def excluded_by_gates(gates: Sequence, failed: torch.Tensor | None, n: int) -> torch.Tensor:
    """Rows whose scorer failed on a gate dimension with `on_failure: exclude`.  (N, K) -> (N,) bool"""
    out = torch.zeros(n, dtype=torch.bool)
    if failed is None:
        return out
    for k, gate in gates:
        if getattr(gate, "on_failure", "veto") == "exclude":
            out = out | failed[:, k].cpu()
    return out


def veto_bound(values: torch.Tensor, vetoed: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per row, the highest value a vetoed completion may keep so that it ranks strictly below every
    unvetoed completion of its group: min(unvetoed) - margin, where margin is the group's whole spread
    (max - min over its scored completions; 1.0 when they are all equal). +inf in a group with no
    unvetoed completion.  (N,), (N,) bool -> (N,)"""
    v, hit = values.view(-1, group_size), vetoed.view(-1, group_size)  # (P, G)
    scored = ~torch.isnan(v)
    inf = torch.full_like(v, float("inf"))
    lo = torch.where(scored, v, inf).min(1).values  # (P,)
    spread = torch.where(scored, v, -inf).max(1).values - lo
    margin = torch.where(spread > 0, spread, torch.ones_like(spread))
    min_unvetoed = torch.where(scored & ~hit, v, inf).min(1).values  # (P,) +inf: none unvetoed
    return (min_unvetoed - margin).unsqueeze(1).expand_as(v).reshape(-1)


def shift_vetoed_below(
    values: torch.Tensor, vetoed: torch.Tensor, ceiling: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Move each group's vetoed completions down by one common shift, the smallest that puts every one
    at or below its row's `ceiling`: their order among themselves (what the other dimensions say) is
    kept, the unvetoed ones do not move.  (N,), (N,) bool, (N,) -> (N,)"""
    v = values.view(-1, group_size)  # (P, G)
    hit = vetoed.view(-1, group_size) & ~torch.isnan(v)
    excess = torch.where(hit, v - ceiling.view(-1, group_size), torch.full_like(v, -float("inf")))
    shift = excess.max(1, keepdim=True).values.clamp(min=0.0)  # (P, 1); 0 in a group with no veto
    return torch.where(hit, v - shift, v).reshape(-1)


def apply_gates(
    reward: torch.Tensor,
    scores: torch.Tensor,
    gates: Sequence,
    failed: torch.Tensor | None = None,
    group_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vetoes: where a gate dimension's raw score is below its threshold, cap or set the reward.

    reward (N,), scores (N, K), gates [(k, Gate)], failed (N, K) bool or None
    -> (gated reward (N,), vetoed (N, len(gates)) bool).
    A NaN score (dimension not applicable) never triggers its gate. A failed score (NaN, `failed` True)
    triggers it under `gate.on_failure == "veto"` (a failed row with a NaN reward gets `value`), and
    makes the reward NaN under `"exclude"` unless another gate vetoes the row.

    Without `group_size` (one answer at a time, as score.py scores a file): `cap` sets R <- min(R, value),
    `set` sets R <- value. With `group_size` (the G completions of a prompt are contiguous, as in
    training), a vetoed completion must also rank strictly below every unvetoed one of its group: `cap`
    moves the group's vetoed completions down by one common shift until each is at or below both
    `value` and `veto_bound` (so, in a group where every answer is vetoed, the other dimensions still
    rank them), `set` gives them min(value, veto_bound).
    """
    failed = failed if failed is not None else torch.zeros(scores.shape, dtype=torch.bool)
    failed = failed.to(reward.device)
    vetoed = []
    ceiling = torch.full_like(reward, float("inf"))  # (N,) cap from every hitting `cap` gate
    for k, gate in gates:
        hit = scores[:, k] < gate.below  # NaN compares False
        failed_veto = failed[:, k] & (getattr(gate, "on_failure", "veto") == "veto")
        hit = hit | failed_veto
        value = torch.full_like(reward, gate.value)
        base = torch.where(failed_veto & torch.isnan(reward), value, reward)
        if gate.mode == "cap":
            reward = torch.where(hit & ~torch.isnan(base), base, reward)
            ceiling = torch.where(hit, torch.minimum(ceiling, value), ceiling)
        else:
            reward = torch.where(hit & ~torch.isnan(base), value, reward)
        vetoed.append(hit)
    vetoed_t = (
        torch.stack(vetoed, 1)
        if vetoed
        else torch.zeros(reward.size(0), 0, dtype=torch.bool, device=reward.device)
    )
    hit_any = vetoed_t.any(1)
    if group_size is None:
        reward = torch.where(hit_any, torch.minimum(reward, ceiling), reward)
    elif hit_any.any():
        bound = veto_bound(reward, hit_any, group_size)
        by_set = hit_any & torch.isinf(ceiling)  # only `set` gates hit: value, below the group's others
        reward = torch.where(by_set, torch.minimum(reward, bound), reward)
        reward = shift_vetoed_below(reward, hit_any & ~by_set, torch.minimum(ceiling, bound), group_size)
    excluded = excluded_by_gates(gates, failed, reward.size(0)).to(reward.device) & ~hit_any
    return torch.where(excluded, torch.full_like(reward, float("nan")), reward), vetoed_t


def aggregate_and_advantages(
    name: str,
    scores: torch.Tensor,
    weights: torch.Tensor,
    ctx: AggregationContext,
    scale: str = "group",
    gates: Sequence = (),
    failed: torch.Tensor | None = None,
    gate_scores: torch.Tensor | None = None,
) -> tuple[AggregatedReward, torch.Tensor, torch.Tensor]:
    """Aggregate, apply gates, then group advantages unless the aggregator made its own.

    -> (agg, advantages (N,), frac_zero_std). Gates see the group (`apply_gates` with `group_size`): a
    vetoed completion ranks strictly below every unvetoed one of its group. With `gdpo` (advantages
    made per dimension) the same shift acts on the advantages, which are then whitened again; a group
    whose completions are all vetoed keeps its per-dimension advantages (no uniform push-down), and a
    completion excluded by a failed gate gets 0.
    `failed` (N, K) bool marks scores whose scorer failed (MatrixScores.failed). `gate_scores` (N, K): the
    raw scores the gates read when `scores` were adjusted (length control); default `scores`.
    """
    agg = get_aggregator(name)(scores, weights, ctx)
    if gate_scores is not None:
        agg.inputs, scores = scores, gate_scores
    if agg.advantages is None:
        agg.reward, vetoed = apply_gates(agg.reward, scores, gates, failed, ctx.group_size)
        grouped = group_advantages(agg.reward, ctx.group_size, scale, ctx.eps)
        return agg, grouped.advantages, grouped.frac_zero_std
    agg.reward, vetoed = apply_gates(agg.reward, scores, gates, failed)  # the logged reward: per answer
    grouped = group_advantages(agg.reward, ctx.group_size, scale, ctx.eps)
    adv = agg.advantages
    hit = vetoed.any(1).to(adv.device) if vetoed.numel() else torch.zeros_like(adv, dtype=torch.bool)
    if hit.any():  # below every unvetoed advantage of the group; all-vetoed groups keep theirs
        adv = shift_vetoed_below(adv, hit, veto_bound(adv, hit, ctx.group_size), ctx.group_size)
        adv = (adv - adv.mean()) / (nanstd(adv) + ctx.eps)
    excluded = excluded_by_gates(gates, failed, adv.size(0)).to(adv.device) & ~hit
    return agg, torch.where(excluded, torch.zeros_like(adv), adv), grouped.frac_zero_std
