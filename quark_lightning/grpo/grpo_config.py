"""The `algorithm` settings of a GRPO run (`GRPOConfig`, TRL's names and semantics where TRL has the
option), validated when built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quark_lightning.config.typed import boolean, check, integer, is_num, number, one_of, optional, rule
from quark_lightning.grpo.loss import LOSS_REDUCTIONS, ROLLOUT_CORRECTION_MODES
from quark_lightning.shaping.aggregation import SCALE_MODES


def _two_betas(v: Any) -> bool:
    return len(v) == 2 and all(is_num(b) and 0 <= b < 1 for b in v)


FLAG = rule(boolean, "true or false")
ALGORITHM_NODES = ("name", "optimizer", "lr_scheduler")  # keys of the `algorithm` group that are not settings


@dataclass
class GRPOConfig:
    """The `algorithm` group: each key's type and range declared once, checked by config/typed.py both when
    the composed config is validated and when this is built."""

    num_generations: int = field(
        default=8, metadata=rule(integer(2), "an integer >= 2 (GRPO compares completions within a group)")
    )
    loss_type: str = field(default="grpo", metadata=rule(one_of(LOSS_REDUCTIONS), f"one of {sorted(LOSS_REDUCTIONS)}"))
    beta: float = field(default=0.01, metadata=rule(number(0), "a number >= 0"))
    epsilon: float = field(default=0.2, metadata=rule(number(0, 1, low_open=True, high_open=True), "a number in (0, 1)"))
    epsilon_high: float | None = field(default=None, metadata=rule(optional(number(0, low_open=True)), "null or a number > 0"))
    num_iterations: int = field(default=1, metadata=rule(integer(1), "an integer >= 1"))
    scale_rewards: str = field(default="group", metadata=rule(one_of(SCALE_MODES), f"one of {list(SCALE_MODES)}"))
    micro_batch_size: int | None = field(default=None, metadata=rule(optional(integer(1)), "null or an integer >= 1"))
    max_grad_norm: float | None = field(default=1.0, metadata=rule(optional(number(0, low_open=True)), "null or a number > 0"))
    lr: float = field(default=1e-5, metadata=rule(number(0, low_open=True), "a learning rate > 0"))
    weight_decay: float = field(default=0.0, metadata=rule(optional(number(0)), "a number >= 0"))
    betas: tuple[float, float] = field(
        default=(0.9, 0.999), metadata=rule(optional(_two_betas), "two numbers in [0, 1), e.g. [0.9, 0.999]")
    )
    warmup_steps: int = field(default=0, metadata=rule(optional(integer(0)), "an integer >= 0"))
    # tokens per LM-head chunk of the log-prob computation (no (N, C, V) logits are held);
    # null = the full-logits path (the whole (n, C, V) upcast to fp32, as before; kept to compare)
    logprob_chunk_size: int | None = field(
        default=256,
        metadata=rule(
            optional(integer(1)),
            "null or an integer >= 1",
            "pass algorithm.logprob_chunk_size=256 (or null for the full-logits path).",
        ),
    )
    gradient_checkpointing: bool = field(default=False, metadata=FLAG)  # TRL's name: recompute activations in the backward
    # TRL's names (GRPOConfig) and semantics:
    importance_sampling_level: str = field(  # token (GRPO) | sequence (GSPO: one ratio per completion)
        default="token", metadata=rule(one_of(("token", "sequence")), "token or sequence")
    )
    delta: float | None = None  # two-sided clipping: the unclipped ratio is capped at delta (> 1 + epsilon_high)
    mask_truncated_completions: bool = field(default=False, metadata=FLAG)  # cut completions contribute nothing
    steps_per_generation: int = field(default=1, metadata=rule(integer(1), "an integer >= 1"))  # optimizer steps per rollout
    entropy_coef: float = field(default=0.0, metadata=rule(number(0), "a number >= 0"))  # -c * H per token (verl's entropy_coeff)
    # rollout correction (TRL's names; every engine that returns sampling log-probs, not only vLLM)
    vllm_importance_sampling_correction: bool = field(default=False, metadata=FLAG)
    vllm_importance_sampling_mode: str = field(
        default="token_truncate",
        metadata=rule(one_of(ROLLOUT_CORRECTION_MODES), " | ".join(ROLLOUT_CORRECTION_MODES)),
    )
    vllm_importance_sampling_cap: float = field(default=2.0, metadata=rule(number(1), "a number >= 1"))
    # DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage) and draw more
    # prompts until the batch is full, at most `dynamic_sampling_max_draws` extra draws per step
    dynamic_sampling: bool = field(default=False, metadata=FLAG)
    dynamic_sampling_max_draws: int = field(default=3, metadata=rule(integer(0), "an integer >= 0"))
    # risk on sampling: a group none of whose completions clears a gate (e.g. a red-flag prompt with no
    # answer directing to care) is sampled again, at most this many times per step; the new group replaces
    # it when one of its completions clears every gate (0 = off)
    redraw_gated_groups: int = field(default=0, metadata=rule(integer(0), "an integer >= 0"))

    def __post_init__(self) -> None:
        check(self, "algorithm", GRPOConfig.cross_key_problems(vars(self)))

    @staticmethod
    def cross_key_problems(values: Mapping[str, Any]) -> list[str]:
        """The rules that read two keys: `delta` must exceed 1 + `epsilon_high` (or 1 + `epsilon`)."""
        epsilon, epsilon_high, delta = values.get("epsilon", 0.2), values.get("epsilon_high"), values.get("delta")
        eps_high = epsilon if epsilon_high is None else epsilon_high
        if delta is None or not is_num(eps_high) or (is_num(delta) and delta > 1.0 + eps_high):
            return []
        expected = f"null or a number > 1 + epsilon_high ({1.0 + eps_high:g})"
        return [f"algorithm.delta: got {delta!r}, expected {expected}. Fix: pass algorithm.delta=<{expected}>."]
