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
    """(N,) values minus their group's mean over the rows that apply; 0 on the rows that do not.
    (N,), (N,) bool -> (N,)"""
    v = torch.where(applies, values, torch.zeros_like(values)).view(-1, group_size)  # (P, G)
    m = applies.view(-1, group_size).to(v.dtype)  # (P, G)
    mean = v.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)  # (P, 1)
    return ((v - mean) * m).reshape(-1)


def length_slopes(scores: torch.Tensor, lengths: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K) raw scores, (N,) lengths -> (K,) each dimension's pooled within-group slope on length."""
    x = upcast(scores)
    length = upcast(lengths).to(x.dtype)
    slopes = torch.zeros(x.size(1), dtype=x.dtype, device=x.device)
    for k in range(x.size(1)):
        applies = ~torch.isnan(x[:, k])
        c = centred_in_groups(torch.nan_to_num(x[:, k]), applies, group_size)  # (N,)
        d = centred_in_groups(length, applies, group_size)  # (N,)
        denom = (d * d).sum()
        if bool(denom > 0):
            slopes[k] = (c * d).sum() / denom
    return slopes


def length_controlled(
    scores: torch.Tensor,  # (N, K) raw
    lengths: torch.Tensor,  # (N,) completion tokens
    group_size: int,
    controlled: torch.Tensor,  # (K,) bool: the dimensions to control
) -> torch.Tensor:
    """(N, K) the scores with each controlled dimension's within-group length slope removed (module doc);
    NaN stays NaN, the other dimensions are returned as they are."""
    x = upcast(scores)
    slopes = torch.where(controlled.to(x.device), length_slopes(x, lengths, group_size), 0.0)  # (K,)
    out = x.clone()
    for k in torch.nonzero(slopes).flatten().tolist():
        applies = ~torch.isnan(x[:, k])
        d = centred_in_groups(upcast(lengths).to(x.dtype), applies, group_size)  # (N,)
        out[:, k] = torch.where(applies, x[:, k] - slopes[k] * d, x[:, k])
    return out.to(scores.dtype)
