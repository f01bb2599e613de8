"""The policy update of one GRPO step: `num_iterations` passes over `steps_per_generation` mini-batches of
whole groups, one optimizer step each; per micro-batch the policy's token log-probs, the loss of
`loss.grpo_policy_loss`, and a backward weighted so that the mini-batch's gradient is that of its
`loss_type` reduction over all of its rows (and, for `dapo`, over all ranks' tokens)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from quark_lightning.grpo.grpo_config import GRPOConfig
from quark_lightning.grpo.logprobs import TokenLogProbs, micro_batches
from quark_lightning.grpo.loss import (
    LOSS_REDUCTIONS,
    chunk_weight,
    correction_stats,
    grpo_policy_loss,
    importance_weights,
    masked_mean,
)
from quark_lightning.infra.distributed import token_level_rank_scale
from quark_lightning.infra.errors import ConfigError
from quark_lightning.rollout.engine import Rollout

STAT_KEYS = ("loss", "kl", "clip_low", "clip_high", "clip_region", "entropy")


def loss_mask(rollout: Rollout, mask_truncated_completions: bool) -> torch.Tensor:
    """(N, C) float: the completion tokens that reach the loss; with `mask_truncated_completions`,
    completions cut at max_new_tokens (no EOS) are all zero (TRL's semantics)."""
    mask = rollout.completion_mask.float()
    if mask_truncated_completions:
        mask = mask * (~rollout.truncated.to(mask.device)).float().unsqueeze(1)
    return mask


def minibatches(n: int, group_size: int, k: int) -> list[slice]:
    """`k` contiguous slices of whole groups (G rows each) over n rows, as even as possible."""
    groups = n // group_size
    if k > groups:
        raise ConfigError(
            f"algorithm.steps_per_generation={k} needs at least {k} prompts per rank and step, got {groups}. "
            f"Fix: raise data.prompts_per_step or lower algorithm.steps_per_generation."
        )
    bounds = [round(i * groups / k) * group_size for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


def update_policy(
    cfg: GRPOConfig,
    logps: TokenLogProbs,
    policy,
    rollout: Rollout,
    advantages: torch.Tensor,  # (N,)
    ref_logp: torch.Tensor | None,  # (N, C) frozen reference, None when beta == 0
    old_logp: torch.Tensor | None,  # (N, C) the generating policy, None when the rollout is used once
    max_completion_length: int,
    optimizer,
    backward: Callable[[torch.Tensor], None],
    step: Callable[[], float],  # clip the gradients, step the optimizer and the schedule -> grad norm
) -> dict[str, float]:
    """Returns the first pass's statistics, token-weighted over its mini-batches (TRL logs the same)."""
    mask = loss_mask(rollout, cfg.mask_truncated_completions)  # (N, C)
    if cfg.vllm_importance_sampling_correction and rollout.sampling_logp is None:
        raise ConfigError(
            "algorithm.vllm_importance_sampling_correction=true needs the sampler's log-probs, and this rollout "
            "engine returned none (rollout.decode=generate keeps none). Fix: rollout.decode=fast, or "
            "algorithm.vllm_importance_sampling_correction=false"
        )
    entropy_grad = cfg.entropy_coef != 0.0
    token_level = LOSS_REDUCTIONS[cfg.loss_type].token_level
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    norms: list[float] = []
    for iteration in range(cfg.num_iterations):
        for mb in minibatches(mask.size(0), cfg.num_generations, cfg.steps_per_generation):
            mb_mask = mask[mb]
            # `dapo` divides by the token count of the whole (all-rank) mini-batch, as single-process
            rank_scale = token_level_rank_scale(mb_mask.sum()) if token_level else 1.0
            mb_share = float(mb_mask.sum() / mask.sum().clamp(min=1))
            optimizer.zero_grad(set_to_none=True)
            for sl in micro_batches(mb.stop - mb.start, cfg.micro_batch_size, offset=mb.start):
                first = iteration == 0  # statistics of the first pass only, as TRL logs
                out, entropy = micro_batch_loss(
                    cfg, logps, policy, rollout, sl, mask, advantages, ref_logp, old_logp, max_completion_length,
                    with_entropy=first or entropy_grad, stats=stats if first else None,
                )  # fmt: skip
                w = chunk_weight(cfg.loss_type, mask[sl], mb_mask) * rank_scale
                backward(out.loss * w)
                if first:
                    _accumulate(stats, out, entropy, mask[sl], mask, w, mb_share)
            norms.append(step())
    n_first = len(norms) // cfg.num_iterations
    stats["grad_norm"] = sum(norms[:n_first]) / max(1, n_first)
    tokens = stats.pop("sampling/tokens", None)
    for key in ("sampling/kl", "sampling/capped_share"):  # token-weighted sums -> means
        if key in stats:
            stats[key] /= max(tokens, 1.0)
    return stats


def micro_batch_loss(
    cfg: GRPOConfig,
    logps: TokenLogProbs,
    policy,
    rollout: Rollout,
    sl: slice,
    mask: torch.Tensor,  # (N, C)
    advantages: torch.Tensor,  # (N,)
    ref_logp: torch.Tensor | None,
    old_logp: torch.Tensor | None,
    max_completion_length: int,
    with_entropy: bool,
    stats: dict[str, float] | None,
):
    """One micro-batch's policy log-probs and GRPO loss (and its entropies, when asked)."""
    entropy_grad = cfg.entropy_coef != 0.0
    logp, entropy = logps(  # (n, C) and, when needed, the entropies (n, C)
        policy,
        rollout.input_ids[sl],
        rollout.attention_mask[sl],
        rollout.completion_ids[sl],
        mask[sl],
        with_entropy=with_entropy,
        entropy_grad=entropy_grad,
    )
    generating = old_logp[sl] if old_logp is not None else logp.detach()  # (n, C)
    out = grpo_policy_loss(
        logp,
        generating,
        ref_logp[sl] if ref_logp is not None else None,
        advantages[sl],
        mask[sl],
        loss_type=cfg.loss_type,
        beta=cfg.beta,
        eps_low=cfg.epsilon,
        eps_high=cfg.epsilon_high,
        max_completion_length=max_completion_length,
        importance_sampling_level=cfg.importance_sampling_level,
        delta=cfg.delta,
        entropy=entropy,
        entropy_coef=cfg.entropy_coef,
        is_weight=correction(cfg, generating, rollout, sl, mask[sl], stats),
    )
    return out, entropy


def correction(cfg: GRPOConfig, generating, rollout: Rollout, sl: slice, mask, stats) -> torch.Tensor | None:
    """The micro-batch's rollout-correction weights (n, C), or None when off; with `stats`, add the
    sampler-trainer mismatch to them, token-weighted (whenever the engine returned sampling log-probs)."""
    if rollout.sampling_logp is None:
        return None
    sampler = rollout.sampling_logp[sl].to(generating)
    if stats is not None:
        seen = correction_stats(generating, sampler, mask, cfg.vllm_importance_sampling_cap)
        for key, value in (("sampling/kl", seen.kl), ("sampling/capped_share", seen.capped_share)):
            stats[key] = stats.get(key, 0.0) + value * seen.tokens
        stats["sampling/tokens"] = stats.get("sampling/tokens", 0.0) + seen.tokens
    if not cfg.vllm_importance_sampling_correction:
        return None
    weights, _ = importance_weights(
        generating, sampler, mask, cfg.vllm_importance_sampling_cap, cfg.vllm_importance_sampling_mode
    )
    return weights


def _accumulate(stats: dict[str, float], out, entropy, chunk_mask, mask, w: float, mb_share: float) -> None:
    tok_w = float(chunk_mask.sum() / mask.sum().clamp(min=1))
    stats["loss"] += float(out.loss.detach()) * w * mb_share
    for key in ("kl", "clip_low", "clip_high", "clip_region"):
        stats[key] += float(getattr(out, key)) * tok_w
    stats["entropy"] += float(masked_mean(entropy.detach(), chunk_mask)) * tok_w
