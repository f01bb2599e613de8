"""GRPOModule: one RL step against the alignment matrix, as a LightningModule.

Flow of `training_step` (docs/design.md section 2):

    prompts -> rollout engine (G completions each) -> matrix scores (N, K) + findings
            -> [dynamic sampling: drop zero-spread groups, draw more prompts (dynamic_sampling.py)]
            -> reward shaping (weights (K,), RFN, gates -> scalar reward (N,)) -> group advantages (N,)
            -> reference log-probs (frozen) -> `num_iterations` x `steps_per_generation` mini-batches x
               [policy log-probs, clipped loss (token or GSPO sequence ratio, optional delta cap)
               + beta * k3 KL - entropy_coef * H, backward, gradient clipping, optimizer step] -> metrics

Optimization is manual because one rollout may feed several optimizer steps (`num_iterations`, TRL's mu,
and `steps_per_generation`).
The policy is the only trainable part. The reference (frozen copy, or the policy with its LoRA adapter
disabled) and the reward models are frozen, in eval mode, and never in the optimizer.

Reward shaping (normalizer statistics, weights, loop gains, gates, aggregation) is one object,
`self.shaping` (shaping/reward_shaping.py): the step applies it, the callbacks drive it (calibrate, update the
weights, set a gain), and its buffers are in the checkpoint once, under `shaping.`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import nn

from quark_lightning.grpo.dynamic_sampling import (
    group_has_spread,
    group_rows,
    groups_without_a_pass,
    plan_batch,
    select_rollout,
    select_scores,
)
from quark_lightning.grpo.loss import (
    LOSS_REDUCTIONS,
    chunk_weight,
    chunked_selective_log_softmax,
    grpo_policy_loss,
    masked_mean,
    selective_log_softmax,
    token_entropy,
)
from quark_lightning.grpo.shared_prefix import (  # noqa: F401
    checkpointing_active,
    completion_hidden_states,
    completion_logits,
    enable_gradient_checkpointing,
    head_split_matches,
    position_ids_from_mask,
    split_lm_head,
)
from quark_lightning.infra.distributed import (
    all_reduce_max_int,
    all_reduce_sum,
    call_on_every_rank,
    clip_grad_norm,
    gather_objects,
    gather_rows,
    global_step_view,
    rank,
    token_level_rank_scale,
    world_size,
)
from quark_lightning.infra.errors import ConfigError
from quark_lightning.matrix import AlignmentMatrix
from quark_lightning.matrix.alignment_matrix import MatrixScores
from quark_lightning.matrix.guard import FailureCounter
from quark_lightning.models.reference import (
    DisabledAdapterReference,
    FrozenCopyReference,
    FrozenModule,
    build_reference,
    eval_mode,
)
from quark_lightning.rollout.engine import Rollout, RolloutEngine
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.shaping.advantages import nanstd
from quark_lightning.shaping.aggregation import AggregatedReward
from quark_lightning.shaping.diagnostics import step_diagnostics
from quark_lightning.shaping.reward_shaping import RewardShaping
from quark_lightning.shaping.rfn import ReferenceFrozenNormalizer


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

        eps_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        checks = [
            (
                "importance_sampling_level",
                self.importance_sampling_level in ("token", "sequence"),
                "token or sequence",
            ),
            (
                "delta",
                self.delta is None or (is_num(self.delta) and self.delta > 1.0 + eps_high),
                f"null or a number > 1 + epsilon_high ({1.0 + eps_high:g})",
            ),
            (
                "mask_truncated_completions",
                isinstance(self.mask_truncated_completions, bool),
                "true or false",
            ),
            (
                "steps_per_generation",
                isinstance(self.steps_per_generation, int)
                and not isinstance(self.steps_per_generation, bool)
                and self.steps_per_generation >= 1,
                "an integer >= 1",
            ),
            ("entropy_coef", is_num(self.entropy_coef) and self.entropy_coef >= 0, "a number >= 0"),
            ("dynamic_sampling", isinstance(self.dynamic_sampling, bool), "true or false"),
            (
                "dynamic_sampling_max_draws",
                isinstance(self.dynamic_sampling_max_draws, int)
                and not isinstance(self.dynamic_sampling_max_draws, bool)
                and self.dynamic_sampling_max_draws >= 0,
                "an integer >= 0",
            ),
            (
                "redraw_gated_groups",
                isinstance(self.redraw_gated_groups, int)
                and not isinstance(self.redraw_gated_groups, bool)
                and self.redraw_gated_groups >= 0,
                "an integer >= 0",
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


def upgrade_shaping_keys(state: dict[str, Any]) -> None:
    """In place: a checkpoint written before RewardShaping owned the state (`normalizer.*`, `weighting.*`,
    `weighting.loop_gain`, `matrix_weights`) gets today's keys; `matrix_weights` is derived state (the
    static weights times the closed loop's gain, which the loop re-applies from its own checkpoint)."""
    state.pop("matrix_weights", None)
    for key in [k for k in state if k.startswith(("normalizer.", "weighting."))]:
        new = "shaping.loop_gain" if key == "weighting.loop_gain" else f"shaping.{key}"
        state[new] = state.pop(key)


class GRPOModule(L.LightningModule):
    def __init__(
        self,
        policy: nn.Module,
        tokenizer,
        matrix: AlignmentMatrix,
        config: GRPOConfig,
        rollout_engine: RolloutEngine | None = None,
        aggregator: str = "sum",
        normalizer: ReferenceFrozenNormalizer | None = None,  # a fitted one (tests); else built by shaping
        lr_scheduler: Any = None,  # optimizer -> LR scheduler (algorithm.lr_scheduler); None = warmup, constant
        shaping: RewardShaping | None = None,  # built from the `optimization` group (cli/run.py); else defaults
    ):
        super().__init__()
        self.lr_scheduler_factory = lr_scheduler
        if config.loss_type not in LOSS_REDUCTIONS:
            raise ValueError(
                f"algorithm.loss_type: {config.loss_type!r} is not one of {sorted(LOSS_REDUCTIONS)}"
            )
        self.policy = policy
        self.tokenizer = tokenizer
        self.matrix = matrix
        self.config = config
        self.engine = rollout_engine or HFGenerateEngine()
        if shaping is None:  # code that builds the module directly: the group's defaults
            shaping = RewardShaping.with_defaults(matrix, aggregator)
        if normalizer is not None:
            shaping.normalizer = normalizer
        self.shaping = shaping  # one owner: normalizer statistics, weights, loop gain (in the checkpoint)
        self.reference = build_reference(policy) if config.beta != 0.0 else None
        if config.gradient_checkpointing:  # after the reference copy, which stays plain (it never trains)
            enable_gradient_checkpointing(policy)
        self._head_split_ok: dict[int, bool] = {}  # id(lm_head) -> the backbone + head split gives the logits
        self.reward_models = nn.ModuleDict({k: FrozenModule(m) for k, m in matrix.torch_modules().items()})
        self.automatic_optimization = False
        self.last_step: StepRecord | None = None
        self._last_lengths: torch.Tensor | None = None  # (N,) completion tokens of the last step
        self._last_weights: torch.Tensor | None = None
        self.scorer_failures = FailureCounter(matrix.names)  # logged as failures/<dim>, failures_total/<dim>

    # read-only views of the shaping state (one owner: self.shaping)
    @property
    def aggregator_name(self) -> str:
        return self.shaping.aggregator

    @property
    def normalizer(self) -> ReferenceFrozenNormalizer | None:
        return self.shaping.normalizer

    @property
    def weighting(self):
        return self.shaping.weighting

    @property
    def matrix_weights(self) -> torch.Tensor:
        """(K,) the weights the next step aggregates with."""
        return self.shaping.weights

    def on_train_start(self) -> None:
        self.shaping.check_drivers()  # e.g. rfn_tadw without its weighting callback: refused, not downgraded
        self.policy.train()  # the warm start or a loader may leave it in eval mode; frozen parts stay eval

    def configure_model(self) -> None:
        """FSDP2 (trainer=fsdp2): shard the policy and the frozen reference copy, one unit per decoder layer.

        Only ModelParallelStrategy sets a device mesh; other strategies leave the module as it is. The
        reference copy is sharded too (it runs one forward per micro-batch on every rank, in step), so it
        costs 1/world of its memory per rank; the small reward models stay replicated.
        """
        mesh = self._device_mesh  # None unless the strategy is ModelParallelStrategy (FSDP2)
        if mesh is None:
            return
        from quark_lightning.infra.strategies import shard_module

        if isinstance(self.reference, FrozenCopyReference):
            shard_module(self.reference.frozen.module, mesh["data_parallel"])
        shard_module(self.policy, mesh["data_parallel"])

    # ------------------------------------------------------------------ log-probs
    # Per-token log-probs are of softmax(logits / T), T the rollout's sampling temperature (TRL divides the
    # logits by `temperature` the same way), for the policy and the reference alike. By default the
    # model's backbone gives the final hidden states and `chunked_selective_log_softmax` applies the LM
    # head a chunk of tokens at a time (no (n, C, V) logits, forward or backward); `logprob_chunk_size:
    # null`, a sharded policy or an architecture whose logits are not lm_head(hidden) use the full logits.
    @property
    def temperature(self) -> float:
        """The rollout engine's sampling temperature (HF engine `sampling`, vLLM `sampling_kwargs`); 1.0 if none."""
        engine = self.engine
        sampling = getattr(engine, "sampling", None) or getattr(engine, "sampling_kwargs", None) or {}
        t = sampling.get("temperature", getattr(engine, "temperature", 1.0))
        return float(t) if t else 1.0  # None / 0 (greedy) -> the plain distribution

    def _forward_logits(self, model_call, input_ids, attention_mask, completion_len: int) -> torch.Tensor:
        """(n, C, V) logits predicting each completion token; a group's prompt runs once (shared_prefix.py)."""
        G = 1 if checkpointing_active(model_call) else self.config.num_generations  # HF drops the cache
        return completion_logits(model_call, input_ids, attention_mask, completion_len, G)

    def policy_logits(self, input_ids, attention_mask, completion_len: int) -> torch.Tensor:
        """The policy's raw (n, C, V) logits of the completion tokens (the full-logits path; no temperature)."""
        return self._forward_logits(self.policy, input_ids, attention_mask, completion_len)

    def _lm_head_split(self, model) -> tuple[nn.Module, nn.Linear] | None:
        """(backbone, lm_head) when the chunked path applies to `model`, else None (full logits)."""
        if not self.config.logprob_chunk_size or not isinstance(model, nn.Module):
            return None
        parts = split_lm_head(model)
        if parts is None:
            return None
        key = id(parts[1])
        if key not in self._head_split_ok:  # checked once per head on a tiny input
            self._head_split_ok[key] = head_split_matches(model, *parts)
        return parts if self._head_split_ok[key] else None

    def token_logps(
        self,
        model,
        input_ids: torch.Tensor,  # (n, P + C)
        attention_mask: torch.Tensor,  # (n, P + C)
        completion_ids: torch.Tensor,  # (n, C)
        completion_mask: torch.Tensor | None = None,  # (n, C); None = every position
        with_entropy: bool = False,
        entropy_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log softmax(logits / T)[completion token] (n, C) fp32 under `model` as it is called (mode, adapter
        state), and the entropies (n, C) when `with_entropy` (detached unless `entropy_grad`). Positions where `completion_mask`
        is 0 are 0 on the chunked path (never computed; every consumer masks them)."""
        C = completion_ids.size(1)
        T = self.temperature
        parts = self._lm_head_split(model)
        if parts is None:
            logits = self._forward_logits(model, input_ids, attention_mask, C)  # (n, C, V)
            logp = selective_log_softmax(logits, completion_ids, T)
            if not with_entropy:
                return logp, None
            return logp, token_entropy(logits if entropy_grad else logits.detach(), T)
        backbone, head = parts
        G = 1 if checkpointing_active(model) else self.config.num_generations  # HF drops the cache
        hidden = completion_hidden_states(backbone, input_ids, attention_mask, C, G)  # (n, C, H)
        return chunked_selective_log_softmax(
            hidden,
            head.weight,
            completion_ids,
            bias=head.bias,
            temperature=T,
            chunk_size=self.config.logprob_chunk_size,
            mask=completion_mask,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
        )

    @contextmanager
    def _reference_model(self):
        """The frozen reference, as a model to call: the frozen copy, or the policy with its adapter off."""
        if isinstance(self.reference, FrozenCopyReference):
            yield self.reference.frozen.module
        elif isinstance(self.reference, DisabledAdapterReference):
            with self.policy.disable_adapter(), eval_mode(self.policy):
                yield self.policy
        else:  # another kind: its own call (full-logits path)
            yield lambda **kw: self.reference.outputs(self.policy, **kw)

    @torch.no_grad()
    def reference_logps(self, rollout: Rollout) -> torch.Tensor:
        """Per-token log-probs of the completions under the frozen reference.  -> (N, C)"""
        out = []
        with self._reference_model() as ref:
            for sl in self._chunks(rollout.completion_ids.size(0)):
                logp, _ = self.token_logps(
                    ref,
                    rollout.input_ids[sl],
                    rollout.attention_mask[sl],
                    rollout.completion_ids[sl],
                    rollout.completion_mask[sl],
                )
                out.append(logp)
        return torch.cat(out)

    @torch.no_grad()
    def policy_logps(self, rollout: Rollout) -> torch.Tensor:
        """Per-token log-probs of the completions under the current policy (no autograd).  -> (N, C)"""
        out = []
        for sl in self._chunks(rollout.completion_ids.size(0)):
            logp, _ = self.token_logps(
                self.policy,
                rollout.input_ids[sl],
                rollout.attention_mask[sl],
                rollout.completion_ids[sl],
                rollout.completion_mask[sl],
            )
            out.append(logp)
        return torch.cat(out)

    def _chunks(self, n: int, offset: int = 0) -> list[slice]:
        """Micro-batches of `micro_batch_size` rows over rows offset .. offset + n."""
        size = self.config.micro_batch_size or n
        return [slice(offset + i, offset + min(i + size, n)) for i in range(0, n, size)]

    def reference_rollout(self, prompts: list[dict[str, Any]], num_generations: int) -> Rollout:
        """Completions sampled from the frozen reference policy (for RFN calibration)."""
        if isinstance(self.reference, FrozenCopyReference):
            return self.engine.generate(
                self.reference.frozen.module, self.tokenizer, prompts, num_generations
            )
        if isinstance(self.reference, DisabledAdapterReference):
            with self.policy.disable_adapter():
                return self.engine.generate(self.policy, self.tokenizer, prompts, num_generations)
        # beta == 0 keeps no reference; calibration runs at the start of the stage, when the policy is it
        return self.engine.generate(self.policy, self.tokenizer, prompts, num_generations)

    # ------------------------------------------------------------------ reward side
    def score_matrix(self, rollout: Rollout) -> MatrixScores:
        """Every dimension's scores under its on_failure policy; failures counted over all ranks."""
        matrix_scores = call_on_every_rank(  # a `stop` failure on one rank stops every rank, same message
            lambda: self.matrix.score(rollout.prompts, rollout.completions), self.device
        )
        self.scorer_failures.record(self._failures_all_ranks(matrix_scores.failures))
        return matrix_scores

    def shape_rewards(self, rollout: Rollout, matrix_scores: MatrixScores):
        """(N, K) scores -> (scores, AggregatedReward, advantages (N,), frac_zero_std), batch statistics
        over the global batch where the aggregation needs them."""
        scores = matrix_scores.scores.to(self.device)  # (N, K)
        failed = matrix_scores.failed.to(self.device)  # (N, K) a failed gate sample is vetoed, never passed
        prompt_ids = [p["id"] for p in rollout.prompts]
        lengths = rollout.completion_mask.sum(1).to(self.device)  # (N,) tokens (length-decoupled RFN)
        if self.shaping.needs_global_batch(self.config.scale_rewards) and world_size() > 1:
            # batch statistics over the global batch, as TRL gathers them; then keep this rank's rows
            n = scores.size(0)
            agg, adv, frac = self._aggregate(
                gather_rows(scores),
                gather_rows(failed.to(torch.uint8)).bool(),
                gather_objects(prompt_ids),
                gather_rows(lengths),
            )
            rows = slice(rank() * n, (rank() + 1) * n)
            agg = AggregatedReward(
                reward=agg.reward[rows],
                advantages=agg.advantages[rows] if agg.advantages is not None else None,
                normalized=agg.normalized[rows] if agg.normalized is not None else None,
                weights=agg.weights,
            )
            return scores, agg, adv[rows], frac
        aggregated, advantages, frac_zero_std = self._aggregate(scores, failed, prompt_ids, lengths)
        return scores, aggregated, advantages, frac_zero_std

    # ------------------------------------------------------------------ dynamic sampling (DAPO)
    def refill(self, batch: list[dict[str, Any]], rollout: Rollout, matrix_scores: MatrixScores):
        """Drop zero-spread groups and draw more prompts until the batch is full (dynamic_sampling.py).
        -> (rollout, matrix_scores) of exactly len(batch) groups."""
        G, target = self.config.num_generations, len(batch)
        draws, spreads = [(rollout, matrix_scores)], [self._spread(rollout, matrix_scores)]
        while len(draws) - 1 < self.config.dynamic_sampling_max_draws:
            short = int(sum(int(s.sum()) for s in spreads) < target)
            if all_reduce_max_int(short, self.device) == 0:  # every rank is full (all ranks agree)
                break
            prompts = self.extra_prompts(target, seed=(self.global_step, len(draws), rank()))
            extra = self.engine.generate(self.policy, self.tokenizer, prompts, G)
            extra_scores = self.score_matrix(extra)
            draws.append((extra, extra_scores))
            spreads.append(self._spread(extra, extra_scores))
        chosen, filled = plan_batch(spreads, target)
        parts = [(draw, group_rows(groups, G)) for draw, groups in zip(draws, chosen) if groups]
        self.dynamic_sampling_stats = {
            "dynamic_sampling/extra_draws": float(len(draws) - 1),
            "dynamic_sampling/zero_std_groups_drawn": float(sum(int((~s).sum()) for s in spreads)),
            "dynamic_sampling/zero_std_groups": float(filled),  # in the batch: 0 unless the cap was hit
        }
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return (
            select_rollout([(r, rows) for (r, _), rows in parts], pad),
            select_scores([(m, rows) for (_, m), rows in parts]),
        )

    def redraw(self, rollout: Rollout, matrix_scores: MatrixScores):
        """Sample again the prompts of groups where no completion clears a gate (groups_without_a_pass),
        up to `redraw_gated_groups` times; a new group replaces the old one when one of its completions
        clears every gate. Every rank draws as long as any rank has such a group (scoring is collective;
        a rank with none redraws its first group and keeps the old one). -> (rollout, matrix_scores)"""
        G, gates = self.config.num_generations, self.shaping.gates
        drawn = replaced = 0
        for _ in range(self.config.redraw_gated_groups):
            stuck = groups_without_a_pass(matrix_scores.scores, matrix_scores.failed, gates, G)
            if all_reduce_max_int(int(stuck.any()), self.device) == 0:
                break
            groups = stuck.nonzero().flatten().tolist() or [0]
            extra = self.engine.generate(
                self.policy, self.tokenizer, [rollout.prompts[g * G] for g in groups], G
            )
            extra_scores = self.score_matrix(extra)
            fixed = ~groups_without_a_pass(extra_scores.scores, extra_scores.failed, gates, G)
            swap = {g: j for j, g in enumerate(groups) if bool(stuck[g]) and bool(fixed[j])}
            drawn, replaced = drawn + int(stuck.sum()), replaced + len(swap)
            if swap:
                keep = [g for g in range(len(stuck)) if g not in swap]
                parts = [
                    ((rollout, matrix_scores), group_rows(keep, G)),
                    ((extra, extra_scores), group_rows(list(swap.values()), G)),
                ]
                pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
                rollout = select_rollout([(r, rows) for (r, _), rows in parts if rows], pad)
                matrix_scores = select_scores([(m, rows) for (_, m), rows in parts if rows])
        self.redraw_stats = {"redraw/groups_without_a_pass": float(drawn), "redraw/replaced": float(replaced)}
        return rollout, matrix_scores

    def _spread(self, rollout: Rollout, matrix_scores: MatrixScores) -> torch.Tensor:
        """(groups,) bool: the group's rewards (this rank's aggregation of this draw) are not all equal."""
        ids = [p["id"] for p in rollout.prompts]
        agg, _, _ = self._aggregate(
            matrix_scores.scores.to(self.device),
            matrix_scores.failed.to(self.device),
            ids,
            rollout.completion_mask.sum(1).to(self.device),
        )
        return group_has_spread(agg.reward.detach().cpu(), self.config.num_generations)

    def extra_prompts(self, n: int, seed: tuple) -> list[dict[str, Any]]:
        """n training prompts drawn at random (seeded by step, draw and rank: a rerun draws the same)."""
        source = getattr(self, "prompt_source", None) or getattr(self.trainer, "datamodule", None)
        if source is None or not hasattr(source, "draw_prompts"):
            raise ConfigError(
                "algorithm.dynamic_sampling needs more prompts than the batch: train with the "
                "PromptDataModule (python train.py does), or set module.prompt_source to an object with "
                "draw_prompts(n, seed). Fix: algorithm.dynamic_sampling=false otherwise."
            )
        return source.draw_prompts(n, seed)

    def _aggregate(self, scores: torch.Tensor, failed: torch.Tensor, prompt_ids: list[str], lengths=None):
        """(N, K) raw scores (and (N,) completion tokens) -> (AggregatedReward, advantages (N,), frac_zero_std)."""
        shaped = self.shaping.shape(
            scores, failed, prompt_ids, self.config.num_generations, self.config.scale_rewards, lengths
        )
        return shaped.aggregated, shaped.advantages, shaped.frac_zero_std

    def _failures_all_ranks(self, failures: dict[str, int]) -> dict[str, int]:
        """This step's scorer-failure counts summed over ranks (every rank calls this each step)."""
        counts = torch.tensor([failures.get(n, 0) for n in self.matrix.names], dtype=torch.float32)
        summed = all_reduce_sum(counts.to(self.device)).tolist()  # (K,)
        return {n: int(c) for n, c in zip(self.matrix.names, summed)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["scorer_failures_total"] = dict(self.scorer_failures.total)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.scorer_failures.total.update(checkpoint.get("scorer_failures_total", {}))
        upgrade_shaping_keys(checkpoint.get("state_dict", {}))

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        """One RL step, top to bottom (README "Concepts" walks the files it calls)."""
        cfg = self.config
        t0 = time.perf_counter()
        # 1. rollout: G completions per prompt (rollout/hf_generate.py or vllm_engine.py)
        rollout = self.engine.generate(self.policy, self.tokenizer, batch, cfg.num_generations)
        t_gen = time.perf_counter()
        # 2. scores: (N, K) per dimension, NaN = not applicable, plus findings (matrix/alignment_matrix.py)
        matrix_scores = self.score_matrix(rollout)
        if cfg.redraw_gated_groups:  # groups with no answer clearing a gate: sample those prompts again
            rollout, matrix_scores = self.redraw(rollout, matrix_scores)
        if cfg.dynamic_sampling:  # drop zero-spread groups, draw more prompts (DAPO)
            rollout, matrix_scores = self.refill(batch, rollout, matrix_scores)
        # 3.-4. shaping and advantages: weights, RFN, gates -> reward (N,) -> advantages (shaping/reward_shaping.py)
        scores, aggregated, advantages, frac_zero_std = self.shape_rewards(rollout, matrix_scores)
        t_score = time.perf_counter()
        # 5. reference (and, when the policy moves before reuse, old-policy) log-probs (N, C)
        ref_logp = self.reference_logps(rollout) if self.reference is not None else None
        off_policy = cfg.num_iterations > 1 or cfg.steps_per_generation > 1
        old_logp = self.policy_logps(rollout) if off_policy else None
        t_ref = time.perf_counter()
        # 6. loss and optimizer steps (grpo/loss.py)
        stats = self._optimize(rollout, advantages, ref_logp, old_logp)
        t_end = time.perf_counter()
        # 7. what callbacks read (TADW update, samples, trend) and the metrics of the whole batch
        self.last_step = self._record(rollout, scores, aggregated, advantages, matrix_scores.findings)
        self._last_lengths = rollout.completion_mask.sum(1).detach().cpu().float()
        self._last_weights = aggregated.weights  # the weights this step used (rfn_tadw: active-only)
        logged = global_step_view(rollout, scores, aggregated, frac_zero_std, stats)  # every rank enters
        self._log_step(*logged, (t0, t_gen, t_score, t_ref, t_end))

    def _record(self, rollout: Rollout, scores, aggregated, advantages, findings) -> StepRecord:
        return StepRecord(
            step=self.global_step,
            prompts=rollout.prompts,
            completions=rollout.completions,
            scores=scores.detach().cpu(),
            normalized=aggregated.normalized.detach().cpu() if aggregated.normalized is not None else None,
            reward=aggregated.reward.detach().cpu(),
            advantages=advantages.detach().cpu(),
            findings=findings,
        )

    def loss_mask(self, rollout: Rollout) -> torch.Tensor:
        """(N, C) float: the completion tokens that reach the loss; with `mask_truncated_completions`,
        completions cut at max_new_tokens (no EOS) are all zero (TRL's semantics)."""
        mask = rollout.completion_mask.float()
        if self.config.mask_truncated_completions:
            mask = mask * (~rollout.truncated.to(mask.device)).float().unsqueeze(1)
        return mask

    def minibatches(self, n: int) -> list[slice]:
        """`steps_per_generation` contiguous slices of whole groups (G rows each), as even as possible."""
        G, k = self.config.num_generations, self.config.steps_per_generation
        groups = n // G
        if k > groups:
            raise ConfigError(
                f"algorithm.steps_per_generation={k} needs at least {k} prompts per rank and step, got {groups}. "
                f"Fix: raise data.prompts_per_step or lower algorithm.steps_per_generation."
            )
        bounds = [round(i * groups / k) * G for i in range(k + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(k)]

    def _optimize(self, rollout: Rollout, advantages, ref_logp, old_logp) -> dict[str, float]:
        """`num_iterations` passes over `steps_per_generation` mini-batches, one optimizer step each.
        Returns the first pass's statistics, token-weighted over its mini-batches (TRL logs the same)."""
        cfg = self.config
        opt, sched = self.optimizers(), self.lr_schedulers()
        mask = self.loss_mask(rollout)  # (N, C)
        C = mask.size(1)
        want_entropy_grad = cfg.entropy_coef != 0.0
        stats = dict.fromkeys(("loss", "kl", "clip_low", "clip_high", "clip_region", "entropy"), 0.0)
        norms: list[float] = []
        for iteration in range(cfg.num_iterations):
            for mb in self.minibatches(mask.size(0)):
                mb_mask = mask[mb]
                # `dapo` divides by the token count of the whole (all-rank) mini-batch, as single-process
                token_level = LOSS_REDUCTIONS[cfg.loss_type].token_level
                rank_scale = token_level_rank_scale(mb_mask.sum()) if token_level else 1.0
                mb_share = float(mb_mask.sum() / mask.sum().clamp(min=1))
                opt.zero_grad(set_to_none=True)
                for sl in self._chunks(mb.stop - mb.start, offset=mb.start):
                    logp, entropy = self.token_logps(  # (n, C) and, when needed, the entropies (n, C)
                        self.policy,
                        rollout.input_ids[sl],
                        rollout.attention_mask[sl],
                        rollout.completion_ids[sl],
                        mask[sl],
                        with_entropy=iteration == 0 or want_entropy_grad,
                        entropy_grad=want_entropy_grad,
                    )
                    out = grpo_policy_loss(
                        logp,
                        old_logp[sl] if old_logp is not None else logp.detach(),
                        ref_logp[sl] if ref_logp is not None else None,
                        advantages[sl],
                        mask[sl],
                        loss_type=cfg.loss_type,
                        beta=cfg.beta,
                        eps_low=cfg.epsilon,
                        eps_high=cfg.epsilon_high,
                        max_completion_length=getattr(
                            self.engine, "max_new_tokens", C
                        ),  # TRL: the config max
                        importance_sampling_level=cfg.importance_sampling_level,
                        delta=cfg.delta,
                        entropy=entropy,
                        entropy_coef=cfg.entropy_coef,
                    )
                    w = chunk_weight(cfg.loss_type, mask[sl], mb_mask) * rank_scale
                    self.manual_backward(out.loss * w)
                    if iteration == 0:
                        tok_w = float(mask[sl].sum() / mask.sum().clamp(min=1))
                        stats["loss"] += float(out.loss.detach()) * w * mb_share
                        for key in ("kl", "clip_low", "clip_high", "clip_region"):
                            stats[key] += float(getattr(out, key)) * tok_w
                        stats["entropy"] += float(masked_mean(entropy.detach(), mask[sl])) * tok_w
                norms.append(self._clip_and_step(opt, sched))
        n_first = len(norms) // cfg.num_iterations
        stats["grad_norm"] = sum(norms[:n_first]) / max(1, n_first)
        return stats

    def _clip_and_step(self, opt, sched) -> float:
        params = [p for p in self.policy.parameters() if p.requires_grad and p.grad is not None]
        norm = float("nan")
        if self.config.max_grad_norm is not None and params:
            wrapped = self._trainer.strategy.model if self._trainer is not None else None  # FSDP1 root
            norm = clip_grad_norm(params, self.config.max_grad_norm, wrapped)
        opt.step()
        if sched is not None:
            sched.step()
        return norm

    # ------------------------------------------------------------------ metrics (TRL names)
    def _log_step(self, rollout: Rollout, scores, aggregated, frac_zero_std, stats, times) -> None:
        t0, t_gen, t_score, t_ref, t_end = times
        G = self.config.num_generations
        metrics: dict[str, float] = {}
        for k, name in enumerate(self.matrix.names):
            col = scores[:, k]
            metrics[f"rewards/{name}/mean"] = (
                float(torch.nanmean(col)) if not torch.isnan(col).all() else float("nan")
            )
            metrics[f"rewards/{name}/std"] = float(nanstd(col))
        for k, name in enumerate(self.matrix.names):
            metrics[f"weights/{name}"] = float(self.shaping.weights[k])
        metrics.update(self.scorer_failures.metrics())
        metrics.update(getattr(self, "dynamic_sampling_stats", {}))
        metrics.update(getattr(self, "redraw_stats", {}))
        if self.matrix.judges():  # this rank's LLM-judge counters since the start: requests, cache hits...
            metrics.update({f"judge/{k}": float(v) for k, v in self.matrix.judge_stats().items()})
        reward = aggregated.reward
        metrics["reward"] = float(torch.nanmean(reward)) if not torch.isnan(reward).all() else float("nan")
        metrics["reward_std"] = float(nanstd(reward.view(-1, G), dim=1).mean())
        metrics["frac_reward_zero_std"] = float(frac_zero_std)
        if aggregated.normalized is not None:
            for k, name in enumerate(self.matrix.names):
                col = aggregated.normalized[:, k]
                metrics[f"normalized/{name}/mean"] = (
                    float(torch.nanmean(col)) if not torch.isnan(col).all() else 0.0
                )
        metrics["kl"] = stats["kl"]
        metrics["entropy"] = stats["entropy"]
        metrics["loss"] = stats["loss"]
        metrics["grad_norm"] = stats["grad_norm"]
        metrics["clip_ratio/low_mean"] = stats["clip_low"]
        metrics["clip_ratio/high_mean"] = stats["clip_high"]
        metrics["clip_ratio/region_mean"] = stats["clip_region"]
        lengths = rollout.completion_mask.sum(1).float()
        metrics["completions/mean_length"] = float(lengths.mean())
        metrics["completions/min_length"] = float(lengths.min())
        metrics["completions/max_length"] = float(lengths.max())
        metrics["completions/clipped_ratio"] = float(rollout.truncated.float().mean())
        metrics["prompts/truncated_ratio"] = float(rollout.prompt_truncated.float().mean())
        metrics["num_tokens"] = float(rollout.attention_mask.sum())
        metrics["step_time"] = t_end - t0
        metrics["time/generation"] = t_gen - t0
        metrics["time/scoring"] = t_score - t_gen
        metrics["time/reference"] = t_ref - t_score
        metrics["time/policy"] = t_end - t_ref
        metrics["lr"] = float(self.optimizers().param_groups[0]["lr"])
        metrics.update(self._diagnostics())
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(rollout.prompts) // G)
        self.log("reward_pbar", metrics["reward"], prog_bar=True, logger=False, batch_size=1)

    def _diagnostics(self) -> dict[str, float]:
        """What moved this step's advantages (shaping/diagnostics.py), on this rank's groups."""
        rec, G = self.last_step, self.config.num_generations
        if rec is None or self._last_lengths is None:
            return {}
        weights = self._last_weights if self._last_weights is not None else self.shaping.weights
        return step_diagnostics(
            self.matrix.names,
            self.shaping.aggregator,
            rec.prompts,
            rec.scores,
            rec.normalized,
            weights.detach().cpu(),
            rec.advantages,
            self._last_lengths,
            G,
        )

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        cfg = self.config
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters; check model.lora / freezing settings")
        from quark_lightning.infra.optimizers import configure_optimizer

        return configure_optimizer(  # the optimizer factory shared with SFT and the reward model
            params,
            getattr(self, "optimizer_factory", None),  # algorithm.optimizer, built; None: AdamW from the keys
            self.lr_scheduler_factory,  # algorithm.lr_scheduler (a `_partial_` schedule); None: linear_warmup
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            betas=cfg.betas,
            warmup_steps=cfg.warmup_steps,
        )
