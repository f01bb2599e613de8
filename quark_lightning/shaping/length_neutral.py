"""Length control: a dimension may not pay for words inside the step's groups.

Interpretation (not in the paper; added because the real demo's answers grew into the token cap, see
benchmarks/results/real_demo_length.md): reward models and several rules rise with answer length, so a
policy buys reward with words. Reference-Frozen Normalization's `length_decoupled` option removes a
slope measured once on the reference's answers; once the policy's answers are longer than the
reference's, or cut at the cap, that slope no longer describes them. Length control (option
`optimization.length_control`: dimension names, or `all`) removes the slope the step itself shows.

For a controlled dimension k, over the step's groups (G contiguous completions per prompt x), on the
completions it applies to (score not NaN):

    c_ik  = r_ik - mean_{j in x} r_jk            the score, centred within its group
    d_i   = l_i  - mean_{j in x} l_j             the completion length (tokens), centred the same way
    b_k   = sum_i c_ik d_i / sum_i d_i^2          one within-group OLS slope, pooled over the groups
    r'_ik = r_ik - b_k d_i                        what the aggregator combines

(b_k = 0 where no group has two lengths to compare.) Properties, each tested by hand:
- every group's mean of the dimension is unchanged (d sums to 0 within a group), so the reward level of
  a prompt is the same and only the ranking inside the group changes;
- within the step, the adjusted dimension is uncorrelated with length inside the groups; under `sum`
  with every dimension controlled, so is the group-centred reward, hence the advantage under
  `scale_rewards: batch` or `none` (under `group` each group is divided by its own std, so the pooled
  correlation is near, not exactly, 0);
- affine-equivariant: r -> a r + c scales b_k by a, and r' -> a r' + c;
- gates read the raw scores: length control changes what a dimension adds, never whether it vetoes.

Like a regression-based length-controlled win rate, this removes the linear length effect only; an
answer with more *content* per token still ranks higher. The slope is a statistic of the whole batch,
so under DDP the scores are gathered first (RewardShaping.needs_global_batch).
"""

from __future__ import annotations

import torch

from quark_lightning.infra.precision import upcast


def centred_in_groups(values: torch.Tensor, applies: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each column minus its group's mean over the rows that apply; 0 on the rows that do not.
    (N, K), (N, K) bool -> (N, K)"""
    K = values.size(1)
    v = torch.where(applies, values, torch.zeros_like(values)).view(-1, group_size, K)  # (P, G, K)
    m = applies.view(-1, group_size, K).to(v.dtype)  # (P, G, K)
    mean = v.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)  # (P, 1, K)
    return ((v - mean) * m).reshape(-1, K)


def centred_scores_and_lengths(
    scores: torch.Tensor, lengths: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) raw scores, (N,) lengths -> (c, d, applies), each (N, K): the scores and the lengths centred
    within their group over the rows where the dimension applies (module doc)."""
    x = upcast(scores)
    applies = ~torch.isnan(x)  # (N, K)
    length = upcast(lengths).to(x.dtype).unsqueeze(1).expand_as(x)  # (N, K)
    return (
        centred_in_groups(torch.nan_to_num(x), applies, group_size),
        centred_in_groups(length, applies, group_size),
        applies,
    )


def pooled_slopes(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(N, K) centred scores and lengths -> (K,) b_k = sum c d / sum d^2 (0 where no length varies)."""
    denom = (d * d).sum(0)  # (K,)
    return torch.where(denom > 0, (c * d).sum(0) / denom.clamp(min=1e-12), torch.zeros_like(denom))


def length_slopes(scores: torch.Tensor, lengths: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K) raw scores, (N,) lengths -> (K,) each dimension's pooled within-group slope on length."""
    c, d, _ = centred_scores_and_lengths(scores, lengths, group_size)
    return pooled_slopes(c, d)


def length_controlled(
    scores: torch.Tensor,  # (N, K) raw
    lengths: torch.Tensor,  # (N,) completion tokens
    group_size: int,
    controlled: torch.Tensor,  # (K,) bool: the dimensions to control
) -> torch.Tensor:
    """(N, K) the scores with each controlled dimension's within-group length slope removed (module doc);
    NaN stays NaN, the other dimensions are returned as they are."""
    x = upcast(scores)
    c, d, applies = centred_scores_and_lengths(x, lengths, group_size)
    slopes = torch.where(controlled.to(x.device), pooled_slopes(c, d), 0.0)  # (K,)
    out = torch.where(applies, x - slopes * d, x)  # (N, K)
    return out.to(scores.dtype)
