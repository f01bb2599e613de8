"""GRPOModule: one RL step against the alignment matrix, as a LightningModule.

Flow of `training_step` (docs/design.md section 2; the README's "one RL step" table lists the files):

    prompts -> rollout engine (G completions each) -> matrix scores (N, K) + findings
            -> [risk redraws, DAPO dynamic sampling (dynamic_sampling.py)]
            -> reward shaping (weights (K,), RFN, gates -> scalar reward (N,)) -> group advantages (N,)
            -> reference log-probs (frozen; logprobs.py) -> the policy update (policy_update.py:
               `num_iterations` x `steps_per_generation` mini-batches x [policy log-probs, the loss of
               loss.py, backward, gradient clipping, optimizer step]) -> metrics (step_metrics.py)

Optimization is manual: one rollout may feed several optimizer steps (`num_iterations`, TRL's mu, and
`steps_per_generation`). The policy is the only trainable part. The reference (frozen copy, or the policy with its LoRA adapter
disabled) and the reward models are frozen, in eval mode, and never in the optimizer.

Reward shaping (normalizer statistics, weights, loop gains, gates, aggregation) is one object,
`self.shaping` (shaping/reward_shaping.py): the step applies it, the callbacks drive it (calibrate, update the
weights, set a gain), and its buffers are in the checkpoint once, under `shaping.`.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import nn

from quark_lightning.grpo.dynamic_sampling import Resampler, prompt_drawer, redraw, refill
from quark_lightning.grpo.grpo_config import GRPOConfig
from quark_lightning.grpo.logprobs import TokenLogProbs, reference_model
from quark_lightning.grpo.loss import LOSS_REDUCTIONS
from quark_lightning.grpo.policy_update import update_policy
from quark_lightning.grpo.shared_prefix import enable_gradient_checkpointing
from quark_lightning.grpo.step_metrics import FailureCounter, StepRecord, step_diagnostics, step_metrics
from quark_lightning.infra.distributed import (
    all_reduce_max_int,
    all_reduce_sum,
    call_on_every_rank,
    clip_grad_norm,
    gather_objects,
    gather_rows,
    global_step_view,
    rank,
    world_size,
)
from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.optimizers import configure_optimizer
from quark_lightning.infra.strategies import shard_module
from quark_lightning.matrix import AlignmentMatrix
from quark_lightning.matrix.alignment_matrix import MatrixScores
from quark_lightning.models.reference import FrozenCopyReference, FrozenModule, build_reference
from quark_lightning.rollout.engine import Rollout, RolloutEngine, sampling_temperature
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.shaping.reward_shaping import RewardShaping
from quark_lightning.shaping.rfn import ReferenceFrozenNormalizer

__all__ = ["GRPOConfig", "GRPOModule", "StepRecord"]


def engine_temperature(module: GRPOModule) -> float:
    """The sampling temperature of the module's rollout engine as it is now (picklable, unlike a lambda)."""
    return sampling_temperature(module.engine)


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
        shaping: RewardShaping | None = None,  # from the `optimization` group (cli/run.py); else defaults
    ):
        super().__init__()
        if config.loss_type not in LOSS_REDUCTIONS:
            raise ConfigError(
                f"algorithm.loss_type: got {config.loss_type!r}, expected one of {sorted(LOSS_REDUCTIONS)}"
            )
        self.policy, self.tokenizer, self.matrix, self.config = policy, tokenizer, matrix, config
        self.lr_scheduler_factory = lr_scheduler
        self.engine = rollout_engine or HFGenerateEngine()
        if shaping is None:  # code that builds the module directly: the group's defaults
            shaping = RewardShaping.with_defaults(matrix, aggregator)
        if normalizer is not None:
            shaping.normalizer = normalizer
        self.shaping = shaping  # one owner: normalizer statistics, weights, loop gain (in the checkpoint)
        self.reference = build_reference(policy) if config.beta != 0.0 else None
        if config.gradient_checkpointing:  # after the reference copy, which stays plain (it never trains)
            enable_gradient_checkpointing(policy)
        # the one log-prob function, for the policy and the reference (at the engine's temperature)
        self.logps = TokenLogProbs(config, temperature=partial(engine_temperature, self))
        self.reward_models = nn.ModuleDict({k: FrozenModule(m) for k, m in matrix.torch_modules().items()})
        self.automatic_optimization = False
        self.last_step: StepRecord | None = None
        self.scorer_failures = FailureCounter(matrix.names)  # logged as failures/<dim>, failures_total/<dim>
        self.prompt_source = None  # draw_prompts(n, seed) for dynamic sampling; None: the datamodule

    def on_train_start(self) -> None:
        self.shaping.check_drivers()  # e.g. rfn_tadw without its weighting callback: refused, not downgraded
        self.policy.train()  # the warm start or a loader may leave it in eval mode; frozen parts stay eval

    def configure_model(self) -> None:
        """FSDP2 (trainer=fsdp2): shard the policy and the frozen reference copy, one unit per decoder layer.
        Only ModelParallelStrategy sets a device mesh; the small reward models stay replicated."""
        if self._device_mesh is None:
            return

        if isinstance(self.reference, FrozenCopyReference):  # it runs one forward per micro-batch, in step
            shard_module(self.reference.frozen.module, self._device_mesh["data_parallel"])
        shard_module(self.policy, self._device_mesh["data_parallel"])

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        """One RL step, top to bottom (the README's "one RL step" table walks the files it enters)."""
        cfg, t0 = self.config, time.perf_counter()
        # 1. rollout: G completions per prompt (rollout/hf_generate.py or vllm_engine.py)
        rollout = self.engine.generate(self.policy, self.tokenizer, batch, cfg.num_generations)
        t_gen = time.perf_counter()
        # 2. scores: (N, K) per dimension, NaN = not applicable, plus findings (matrix/alignment_matrix.py)
        draw, sampling_stats = (rollout, self.score_matrix(rollout)), {}
        if cfg.redraw_gated_groups:  # groups with no answer clearing a gate: sample those prompts again
            draw, sampling_stats = redraw(self.resampler(), draw, self.shaping.gates, cfg.redraw_gated_groups)
        if cfg.dynamic_sampling:  # drop zero-spread groups, draw more prompts (DAPO)
            seed = (self.global_step, rank())
            draw, more = refill(self.resampler(), draw, len(batch), cfg.dynamic_sampling_max_draws, seed)
            sampling_stats |= more
        rollout, matrix_scores = draw
        # 3.-4. shaping and advantages: weights, RFN, gates -> reward (N,) -> advantages (shaping/)
        scores, aggregated, advantages, frac_zero_std = self.shape_rewards(rollout, matrix_scores)
        t_score = time.perf_counter()
        # 5. reference (and, when the policy moves before reuse, old-policy) log-probs (N, C) (logprobs.py)
        ref_logp = self.reference_logps(rollout)
        reused = cfg.num_iterations > 1 or cfg.steps_per_generation > 1
        old_logp = self.logps.of_rollout(self.policy, rollout) if reused else None
        t_ref = time.perf_counter()
        # 6. loss, backward and optimizer steps (policy_update.py, loss.py)
        stats = self.update_policy(rollout, advantages, ref_logp, old_logp)
        # 7. what callbacks read (TADW update, samples, trend) and the metrics of the whole batch
        used = aggregated.weights if aggregated.weights is not None else self.shaping.weights
        findings = matrix_scores.findings
        self.last_step = StepRecord.of(
            self.global_step, rollout, scores, aggregated, advantages, used, findings
        )
        logged = global_step_view(rollout, scores, aggregated, frac_zero_std, stats)  # every rank enters
        self._log_step(*logged, (t0, t_gen, t_score, t_ref, time.perf_counter()), sampling_stats)

    def score_matrix(self, rollout: Rollout) -> MatrixScores:
        """Every dimension's scores under its on_failure policy; failures counted over all ranks."""
        matrix_scores = call_on_every_rank(  # a `stop` failure on one rank stops every rank, same message
            lambda: self.matrix.score(rollout.prompts, rollout.completions), self.device
        )
        names = self.matrix.names
        counts = torch.tensor([matrix_scores.failures.get(n, 0) for n in names], dtype=torch.float32)
        summed = all_reduce_sum(counts.to(self.device)).tolist()  # (K,) this step's failures, all ranks
        self.scorer_failures.record({n: int(c) for n, c in zip(names, summed)})
        return matrix_scores

    def shape_rewards(self, rollout: Rollout, matrix_scores: MatrixScores, gather: bool = True):
        """(N, K) scores -> (scores, AggregatedReward, advantages (N,), frac_zero_std); batch statistics over
        the global batch where the aggregation needs them (`gather`: False = this rank's rows only)."""
        scores = matrix_scores.scores.to(self.device)  # (N, K)
        failed = matrix_scores.failed.to(self.device)  # (N, K) a failed gate sample is vetoed, never passed
        ids, lengths = [p["id"] for p in rollout.prompts], rollout.completion_mask.sum(1).to(self.device)
        G, scale = self.config.num_generations, self.config.scale_rewards
        if not (gather and self.shaping.needs_global_batch(scale) and world_size() > 1):
            shaped = self.shaping.shape(scores, failed, ids, G, scale, lengths)
            return scores, shaped.aggregated, shaped.advantages, shaped.frac_zero_std
        # batch statistics over the global batch, as TRL gathers them; then keep this rank's rows
        all_failed = gather_rows(failed.to(torch.uint8)).bool()
        shaped = self.shaping.shape(
            gather_rows(scores), all_failed, gather_objects(ids), G, scale, gather_rows(lengths)
        )
        rows = slice(rank() * scores.size(0), (rank() + 1) * scores.size(0))
        return scores, shaped.aggregated.rows(rows), shaped.advantages[rows], shaped.frac_zero_std

    def resampler(self) -> Resampler:
        """The step's pieces that risk redraws and dynamic sampling use (grpo/dynamic_sampling.py)."""
        source = self.prompt_source or getattr(self._trainer, "datamodule", None)
        pad = self.tokenizer.pad_token_id
        return Resampler(
            group_size=self.config.num_generations,
            generate=lambda prompts: self.engine.generate(
                self.policy, self.tokenizer, prompts, self.config.num_generations
            ),
            score=self.score_matrix,
            reward=lambda r, m: self.shape_rewards(r, m, gather=False)[1].reward,
            any_rank=lambda value: all_reduce_max_int(value, self.device),
            draw_prompts=prompt_drawer(source),
            pad_token_id=pad if pad is not None else 0,
        )

    def reference_logps(self, rollout: Rollout) -> torch.Tensor | None:
        """(N, C) log-probs of the completions under the frozen reference; None when beta == 0 (no KL)."""
        if self.reference is None:
            return None
        with reference_model(self.reference, self.policy) as ref:
            return self.logps.of_rollout(ref, rollout)

    def reference_rollout(self, prompts: list[dict[str, Any]], num_generations: int) -> Rollout:
        """Completions sampled from the frozen reference policy (RFN calibration). With beta == 0 no
        reference is kept: calibration runs at the start of the stage, when the policy is the reference."""
        if self.reference is None:
            return self.engine.generate(self.policy, self.tokenizer, prompts, num_generations)
        with reference_model(self.reference, self.policy) as ref:
            return self.engine.generate(ref, self.tokenizer, prompts, num_generations)

    def update_policy(self, rollout: Rollout, advantages, ref_logp, old_logp) -> dict[str, float]:
        """The optimizer steps of one rollout (grpo/policy_update.py); returns the first pass's statistics."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        max_len = getattr(self.engine, "max_new_tokens", rollout.completion_ids.size(1))  # TRL: config max
        step = lambda: self._clip_and_step(opt, sched)  # noqa: E731
        args = (rollout, advantages, ref_logp, old_logp, max_len, opt, self.manual_backward, step)
        return update_policy(self.config, self.logps, self.policy, *args)

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

    def _log_step(self, rollout, scores, aggregated, frac_zero_std, stats, times, sampling_stats) -> None:
        """The step's metrics (grpo/step_metrics.py), its counters and what moved its advantages."""
        G, rec = self.config.num_generations, self.last_step
        lr = float(self.optimizers().param_groups[0]["lr"])
        metrics = step_metrics(
            self.matrix.names,
            rollout,
            scores,
            aggregated,
            self.shaping.weights,
            frac_zero_std,
            stats,
            times,
            G,
            lr,
        )
        metrics |= self.scorer_failures.metrics() | sampling_stats
        metrics |= getattr(self.engine, "step_metrics", dict)()  # e.g. the rollout copy's refresh time
        if self.matrix.judges():  # this rank's LLM-judge counters since the start: requests, cache hits...
            metrics |= {f"judge/{k}": float(v) for k, v in self.matrix.judge_stats().items()}
        metrics |= step_diagnostics(  # on this rank's groups
            self.matrix.names,
            self.shaping.aggregator,
            rec.prompts,
            rec.scores,
            rec.normalized,
            rec.weights,
            rec.advantages,
            rec.lengths,
            G,
            inputs=rec.inputs,
        )
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(rollout.prompts) // G)
        self.log("reward_pbar", metrics["reward"], prog_bar=True, logger=False, batch_size=1)

    # ------------------------------------------------------------------ checkpoint and optimizer
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["scorer_failures_total"] = dict(self.scorer_failures.total)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.scorer_failures.total.update(checkpoint.get("scorer_failures_total", {}))

    def configure_optimizers(self):
        cfg, params = self.config, [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters; check model.lora / freezing settings")

        return configure_optimizer(  # the optimizer factory shared with SFT and the reward model
            params,
            getattr(self, "optimizer_factory", None),  # algorithm.optimizer, built; None: AdamW from the keys
            self.lr_scheduler_factory,  # algorithm.lr_scheduler (a `_partial_` schedule); None: linear_warmup
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            betas=cfg.betas,
            warmup_steps=cfg.warmup_steps,
        )
