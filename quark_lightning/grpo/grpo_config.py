"""The `algorithm` settings of a GRPO run (`GRPOConfig`, TRL's names and semantics where TRL has the
option), validated when built, and what one step leaves for the callbacks (`StepRecord`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from quark_lightning.grpo.rollout_correction import ROLLOUT_CORRECTION_MODES
from quark_lightning.infra.errors import ConfigError


@dataclass
class GRPOConfig:
    num_generations: int = 8
    loss_type: str = "grpo"
    beta: float = 0.01
    epsilon: float = 0.2
    epsilon_high: float | None = None
    num_iterations: int = 1
    scale_rewards: str = "group"
    micro_batch_size: int | None = None
    max_grad_norm: float | None = 1.0
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    # tokens per LM-head chunk of the log-prob computation (no (N, C, V) logits are held);
    # null = the full-logits path (the whole (n, C, V) upcast to fp32, as before; kept to compare)
    logprob_chunk_size: int | None = 256
    gradient_checkpointing: bool = False  # TRL's name: recompute the policy's activations in the backward
    # TRL's names (GRPOConfig) and semantics:
    importance_sampling_level: str = "token"  # token (GRPO) | sequence (GSPO: one ratio per completion)
    delta: float | None = None  # two-sided clipping: the unclipped ratio is capped at delta (> 1 + epsilon)
    mask_truncated_completions: bool = False  # completions cut at max_new_tokens contribute nothing
    steps_per_generation: int = 1  # optimizer steps (mini-batches of whole groups) per rollout
    entropy_coef: float = 0.0  # entropy bonus -c * H in the per-token loss (verl's entropy_coeff)
    # rollout correction (TRL's names; every engine that returns sampling log-probs, not only vLLM)
    vllm_importance_sampling_correction: bool = False
    vllm_importance_sampling_mode: str = "token_truncate"  # token_truncate | token_mask | sequence_*
    vllm_importance_sampling_cap: float = 2.0
    # DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage) and draw more
    # prompts until the batch is full, at most `dynamic_sampling_max_draws` extra draws per step
    dynamic_sampling: bool = False
    dynamic_sampling_max_draws: int = 3
    # risk on sampling: a group none of whose completions clears a gate (e.g. a red-flag prompt with no
    # answer directing to care) is sampled again, at most this many times per step; the new group replaces
    # it when one of its completions clears every gate (0 = off)
    redraw_gated_groups: int = 0

    def __post_init__(self) -> None:
        self._check_trl_options()
        chunk = self.logprob_chunk_size
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ConfigError(
                f"algorithm.logprob_chunk_size: got {chunk!r}, expected null or an integer >= 1. "
                "Fix: pass algorithm.logprob_chunk_size=256 (or null for the full-logits path)."
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(
                f"algorithm.gradient_checkpointing: got {self.gradient_checkpointing!r}, expected true or false"
            )

    def _check_trl_options(self) -> None:
        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def is_int(v, low: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        eps_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        flags = ("mask_truncated_completions", "dynamic_sampling", "vllm_importance_sampling_correction")
        checks = [(key, isinstance(getattr(self, key), bool), "true or false") for key in flags]
        checks += [
            ("importance_sampling_level", self.importance_sampling_level in ("token", "sequence"), "token or sequence"),
            (
                "delta",
                self.delta is None or (is_num(self.delta) and self.delta > 1.0 + eps_high),
                f"null or a number > 1 + epsilon_high ({1.0 + eps_high:g})",
            ),
            ("steps_per_generation", is_int(self.steps_per_generation, 1), "an integer >= 1"),
            ("entropy_coef", is_num(self.entropy_coef) and self.entropy_coef >= 0, "a number >= 0"),
            ("dynamic_sampling_max_draws", is_int(self.dynamic_sampling_max_draws, 0), "an integer >= 0"),
            ("redraw_gated_groups", is_int(self.redraw_gated_groups, 0), "an integer >= 0"),
            (
                "vllm_importance_sampling_mode",
                self.vllm_importance_sampling_mode in ROLLOUT_CORRECTION_MODES,
                " | ".join(ROLLOUT_CORRECTION_MODES),
            ),
            (
                "vllm_importance_sampling_cap",
                is_num(self.vllm_importance_sampling_cap) and self.vllm_importance_sampling_cap >= 1.0,
                "a number >= 1",
            ),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"algorithm.{key}: got {getattr(self, key)!r}, expected {expected}. "
                    f"Fix: pass algorithm.{key}=<{expected}>."
                )


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
