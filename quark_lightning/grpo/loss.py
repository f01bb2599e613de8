"""GRPO policy loss as small pure functions on tensors.

Objective (per token t of completion i, advantage A_i shared by every token of the completion):

    ratio_it   = exp(logp_it - old_logp_it)
    surrogate  = min(ratio_it * A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) * A_i)
    kl_it      = exp(ref_logp_it - logp_it) - (ref_logp_it - logp_it) - 1        (k3 estimator)
    loss_it    = -surrogate + beta * kl_it

Options (TRL's names): `importance_sampling_level="sequence"` (GSPO) replaces the token ratio by one
ratio per completion, exp(mean_t(logp_it - old_logp_it)) over its tokens; `delta` caps the unclipped
ratio (two-sided clipping); `entropy_coef` c adds -c * H_it (an entropy bonus).

and the per-token losses are reduced by `loss_type`, with the same semantics as TRL's GRPOTrainer:

    grpo     mean over each completion's tokens, then mean over completions
    dr_grpo  sum over all tokens / (num_completions * max_completion_length)   (Dr. GRPO, 2503.20783)
    dapo     sum over all tokens / number of completion tokens in the batch     (token-level, DAPO)

Departures from TRL: none in the math. The reduction here is over the batch it is given; across ranks,
GRPOModule scales a rank's `dapo` loss by world * rank_tokens / all_tokens (infra/distributed.py), so that the
gradient average over ranks divides by the token count of the whole batch, as TRL's gathered count does,
and `dr_grpo` divides by the configured max completion length (rollout.max_new_tokens), as TRL does.

Rollout correction (`importance_weights`, `correction_stats`): the sampler is not the trainer, so weigh each
token by how much more (or less) likely the trainer finds it (truncated importance sampling, as TRL's
`vllm_importance_sampling_correction` and verl's rollout correction). One implementation for every rollout engine that returns its sampling log-probs
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

from collections.abc import Callable
from dataclasses import dataclass

import torch

LossReduction = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(policy || reference) per token (Schulman 2020); always >= 0.  (B, T) -> (B, T)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def importance_log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None, level: str = "token"
) -> torch.Tensor:
    """log(pi / pi_old) per token (`token`, GRPO) or one per completion broadcast to its tokens (`sequence`,
    GSPO 2507.18071, TRL's importance_sampling_level): the mean of the token log-ratios over the
    completion's tokens, i.e. the log of the length-normalized sequence likelihood ratio.
    (B, T), (B, T), (B, T) -> (B, T) or (B, 1)."""
    log_ratio = logp - old_logp
    if level == "token":
        return log_ratio
    if level == "sequence":
        if mask is None:
            mask = torch.ones_like(log_ratio)
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # (B, 1)
    raise ValueError(
        f"importance_sampling_level: got {level!r}, expected one of {IMPORTANCE_SAMPLING_LEVELS}"
    )


def clipped_surrogate(
    logp: torch.Tensor,  # (B, T) current policy
    old_logp: torch.Tensor,  # (B, T) policy that generated the rollout (detached)
    advantages: torch.Tensor,  # (B,)
    eps_low: float,
    eps_high: float,
    *,
    level: str = "token",
    delta: float | None = None,
    mask: torch.Tensor | None = None,  # (B, T), needed by level="sequence"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token.  Returns (surrogate (B, T), low_clipped (B, T), high_clipped (B, T)).

    `delta` (TRL's two-sided GRPO, INTELLECT-2): the unclipped term's ratio is capped at `delta`, so a
    negative-advantage token whose ratio exploded cannot contribute an unbounded loss.
    """
    ratio = torch.exp(importance_log_ratio(logp, old_logp, mask, level)).expand_as(logp)  # (B, T)
    adv = advantages.unsqueeze(1)  # (B, 1)
    clipped_ratio = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    surrogate = torch.min(unclipped * adv, clipped_ratio * adv)
    low_clipped = (ratio < 1.0 - eps_low) & (adv < 0)
    high_clipped = (ratio > 1.0 + eps_high) & (adv > 0)
    return surrogate, low_clipped, high_clipped


def _reduce_grpo(per_token: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
    return per_seq.mean()


def _reduce_dr_grpo(per_token: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    return (per_token * mask).sum() / (per_token.size(0) * max_len)


def _reduce_dapo(per_token: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass(frozen=True)
class Reduction:
    """A loss reduction and whether it averages over tokens (so micro-batches and ranks weigh by tokens)."""

    fn: LossReduction
    token_level: bool = False

    def __call__(self, per_token: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
        return self.fn(per_token, mask, max_len)


LOSS_REDUCTIONS: dict[str, Reduction] = {
    "grpo": Reduction(_reduce_grpo),
    "dr_grpo": Reduction(_reduce_dr_grpo),
    "dapo": Reduction(_reduce_dapo, token_level=True),
}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    kl: torch.Tensor  # scalar, mean k3 KL over completion tokens (detached)
    clip_low: torch.Tensor  # fraction of tokens clipped below
    clip_high: torch.Tensor  # fraction of tokens clipped above
    clip_region: torch.Tensor  # fraction clipped either way


def grpo_policy_loss(
    logp: torch.Tensor,  # (B, T)
    old_logp: torch.Tensor,  # (B, T)
    ref_logp: torch.Tensor | None,  # (B, T) or None when beta == 0
    advantages: torch.Tensor,  # (B,)
    mask: torch.Tensor,  # (B, T) 1.0 on completion tokens
    *,
    loss_type: str = "grpo",
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    max_completion_length: int | None = None,
    importance_sampling_level: str = "token",
    delta: float | None = None,
    entropy: torch.Tensor | None = None,  # (B, T) differentiable, with entropy_coef != 0
    entropy_coef: float = 0.0,
    is_weight: torch.Tensor | None = None,  # (B, T) detached rollout-correction weights (`importance_weights`)
) -> PolicyLossOutput:
    """The full GRPO loss of one batch of completions, plus the statistics TRL logs.

    With `entropy_coef` c the per-token loss gains -c * H_t (an entropy bonus, verl's entropy_coeff):
    minimizing the loss then raises the policy's entropy. TRL has no such term. `is_weight` multiplies the
    policy-gradient term only (the sampler-vs-trainer correction, TRL's order: before the KL is added).
    """
    if loss_type not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {sorted(LOSS_REDUCTIONS)}")
    mask = mask.to(logp.dtype)
    eps_high = eps_low if eps_high is None else eps_high
    surrogate, low, high = clipped_surrogate(
        logp, old_logp, advantages, eps_low, eps_high, level=importance_sampling_level, delta=delta, mask=mask
    )
    per_token = -surrogate  # (B, T)
    if is_weight is not None:
        per_token = per_token * is_weight
    if entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the per-token entropies")
        per_token = per_token - entropy_coef * entropy
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs reference log-probs")
        kl_tokens = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl_tokens
        kl = masked_mean(kl_tokens.detach(), mask)
    else:
        kl = logp.new_zeros(())
    max_len = max_completion_length or logp.size(1)
    loss = LOSS_REDUCTIONS[loss_type](per_token, mask, max_len)
    low_f, high_f = low.to(mask.dtype), high.to(mask.dtype)
    return PolicyLossOutput(
        loss=loss,
        kl=kl,
        clip_low=masked_mean(low_f, mask),
        clip_high=masked_mean(high_f, mask),
        clip_region=masked_mean(((low | high).to(mask.dtype)), mask),
    )


def chunk_weight(loss_type: str, chunk_mask: torch.Tensor, full_mask: torch.Tensor) -> float:
    """Scale of a micro-batch's loss so that micro-batch losses sum to the full-batch loss.

    `grpo` and `dr_grpo` average over completions (weight = chunk size / batch size); `dapo` averages over
    tokens (weight = chunk tokens / batch tokens).
    """
    if LOSS_REDUCTIONS[loss_type].token_level:
        return float(chunk_mask.sum() / full_mask.sum().clamp(min=1))
    return chunk_mask.size(0) / full_mask.size(0)


# ---------------------------------------------------------------- rollout correction
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
