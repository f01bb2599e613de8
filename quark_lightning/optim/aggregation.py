"""Aggregation: the matrix's (N, K) raw scores -> one scalar reward per completion.

This is the seam where the unified optimization (Reference-Frozen Normalization, Tri-Factor Adaptive
Dynamic Weighting) plugs in: an aggregator is any object with

    __call__(scores (N, K), weights (K,)) -> AggregatedReward(reward (N,), ...)

and is chosen by name from `AGGREGATORS` (config key `optimization.aggregator`).

`weighted_sum` (the foundation's default) is TRL's `sum_then_normalize` reward: a NaN score (dimension
does not apply) contributes 0, and a completion no dimension applies to gets NaN (then advantage 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class AggregatedReward:
    reward: torch.Tensor  # (N,) scalar reward fed to the advantage estimator
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # diagnostics to log


def weighted_sum(scores: torch.Tensor, weights: torch.Tensor) -> AggregatedReward:
    """nansum_k w_k * r_k; rows where every dimension is NaN stay NaN.  (N, K), (K,) -> (N,)."""
    if scores.dim() != 2 or scores.size(1) != weights.numel():
        raise ValueError(f"scores {tuple(scores.shape)} and weights {tuple(weights.shape)} do not match")
    weighted = scores * weights.to(scores)  # (N, K)
    reward = torch.nansum(weighted, dim=1)  # (N,)
    all_nan = torch.isnan(scores).all(dim=1)
    reward = torch.where(all_nan, torch.full_like(reward, float("nan")), reward)
    return AggregatedReward(reward=reward)


Aggregator = Callable[[torch.Tensor, torch.Tensor], AggregatedReward]

AGGREGATORS: dict[str, Aggregator] = {"weighted_sum": weighted_sum}


def get_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise KeyError(f"unknown aggregator {name!r}; expected one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name]
