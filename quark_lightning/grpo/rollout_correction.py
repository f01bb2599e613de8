"""Rollout correction: the sampler is not the trainer, so weigh each token by how much more (or less) likely
the trainer finds it (truncated importance sampling, as TRL's `vllm_importance_sampling_correction` and verl's
rollout correction). One implementation for every rollout engine that returns its sampling log-probs
(`Rollout.sampling_logp`): vLLM in 16 bits against a 32-bit trainer, a low-precision CPU rollout copy, or
the fp32 HF engine, whose incremental KV-cache decode differs from the trainer's full forward in the last bits.

Per completion token t of row i, with trainer log-prob l_it (the generating policy, as the trainer computes
it: `old_logp`) and sampler log-prob s_it (both at the sampling temperature, before top-k / top-p / min-p):

    token_truncate     w_it = min(exp(l_it - s_it), cap)                       (TRL's default mode)
    token_mask         w_it = exp(l_it - s_it) if it is <= cap, else 0         (the token is dropped)
    sequence_truncate  w_it = min(exp(sum_t (l_it - s_it)), cap)               one weight per completion
    sequence_mask      w_it = exp(sum_t (l_it - s_it)) if <= cap, else 0

The policy-gradient term of the per-token loss is multiplied by w (detached); the KL and entropy terms are
not (as TRL). Interpretation: the log-probs compared are of the tempered but unwarped distribution, the one
the trainer's log-probs are of, so the weight measures the precision mismatch, not the top-k / top-p cut.

Logged per step (with or without the correction, whenever the engine returns sampling log-probs):
`sampling/kl` = mean over completion tokens of s - l, the direct estimate of KL(sampler || trainer) on the
sampler's own tokens; `sampling/capped_share` = the share of tokens whose ratio exceeds the cap;
`sampling/ratio_max` = the largest (uncapped) ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROLLOUT_CORRECTION_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class CorrectionStats:
    kl: float  # mean over tokens of sampler - trainer log-prob
    capped_share: float  # share of tokens whose ratio is above the cap
    ratio_max: float
    tokens: float  # completion tokens counted (for weighting across micro-batches)


def importance_weights(
    trainer_logp: torch.Tensor,  # (n, C) the generating policy, as the trainer computes it
    sampler_logp: torch.Tensor,  # (n, C) as the rollout engine sampled
    mask: torch.Tensor,  # (n, C) 1.0 on completion tokens
    cap: float,
    mode: str = "token_truncate",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, C) weights (0 off the mask) and (n, C) bool: the ratio exceeded the cap."""
    if mode not in ROLLOUT_CORRECTION_MODES:
        raise ValueError(f"importance sampling mode: got {mode!r}, expected one of {ROLLOUT_CORRECTION_MODES}")
    log_ratio = (trainer_logp - sampler_logp) * mask  # (n, C)
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(mask)  # (n, C): the completion's ratio
    ratio = torch.exp(log_ratio)
    over = (ratio > cap) & (mask > 0)
    if mode.endswith("truncate"):
        weights = torch.clamp(ratio, max=cap)
    else:
        weights = torch.where(over, torch.zeros_like(ratio), ratio)
    return weights.detach() * mask, over


def correction_stats(
    trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> CorrectionStats:
    """The sampler-trainer mismatch of one micro-batch (token-level, over the mask)."""
    tokens = mask.sum().clamp(min=1.0)
    diff = (sampler_logp - trainer_logp) * mask
    ratio = torch.exp(-diff) * mask
    return CorrectionStats(
        kl=float(diff.sum() / tokens),
        capped_share=float(((ratio > cap) & (mask > 0)).sum() / tokens),
        ratio_max=float(ratio.max()) if mask.any() else 1.0,
        tokens=float(mask.sum()),
    )
