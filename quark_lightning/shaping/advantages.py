"""Group-relative advantages, with TRL GRPOTrainer semantics (docs/design.md section 4).

For rewards r of shape (N,), N = num_prompts * G with the G completions of a prompt contiguous:

    mean_g = nanmean over the G completions of the prompt
    std    = unbiased nanstd over the group ("group"), over the whole batch ("batch"), or 1 ("none")
    A      = (r - mean_g) / (std + 1e-4)            ("none": A = r - mean_g, the Dr. GRPO choice)
    A[r is NaN] = 0                                  (completions no dimension applies to)

A group with fewer than two scored completions has std 0 (not NaN), so its advantages are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
