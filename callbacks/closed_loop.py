"""Closed-loop supervision: observable metrics -> attributable diagnosis -> reward update.

Every `every_n_steps` optimizer steps (and at the start and the end of training) the policy answers a
held-out diagnosis split (greedy decoding by default); the matrix scores the answers and
`quark_lightning.loop.metrics.evaluation_metrics` turns them into per-dimension / category / area metrics
and a diagnosis. Then the loop changes what is optimized next: per-dimension loop gains, the area
curriculum, and at item level format-rule, rubric-item and prompt-sampling weights and mined bad phrases.
The rules are in `quark_lightning/loop/__init__.py`, each one a pure function of that package.

This callback drives; it keeps none of the reward state. The gain is RewardShaping's `loop_gain` buffer,
everything else is RewardShaping's `LoopState` (`pl_module.shaping.loop`, loop/loop_state.py), which hands
its weights to the scorers and the sampler (each update ends by handing out what it changed) and is saved
with the module. What the callback keeps is its
report record (`history`, `weights_history`, in its checkpoint state) and a cache of the reference answers'
scores. No acting evaluation happens at the last step (nothing would train on it).

The held-out answers are scored with the matrix as configured (`LoopState.suspended`), not with the
item-level weights and mined phrases the loop has set: those are the reward the policy trains against.
Scored with them, a table could fall only because the loop raised the weight of the rules it found broken
(on the real demo a placebo run's format mean fell 0.066 that way, five seeds, and 0.002 scored as
configured: the same answers), and the loop would read its own reweighting as a failure. `evaluate.py` without `reward_state` reproduces these
tables; with it, it scores with the trained reward.

Every change is recorded as an action with its reason (logged to TensorBoard text, printed, written to the
report), e.g. `format_rules: held-out pass rate 0.12 < 0.90 (top finding 'length: # words, below the
minimum of #', 100% of answers); loop gain 1.00 -> 1.88`. Each evaluation writes a report (Markdown, PNG
plots, metrics JSON) under `report_dir/step_<N>/`; the end of the run writes `report_dir/summary.md`
(start vs end). Every rank evaluates the same prompts greedily, so every rank takes the same actions.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch

from quark_lightning.evaluation.report import summary_table, write_report
from quark_lightning.infra.loggers import log_scalars, log_text
from quark_lightning.infra.precision import upcast
from quark_lightning.loop.dimension_actions import curriculum_weights, failing, loop_gains, share_actions
from quark_lightning.loop.item_actions import (
    format_rule_weights,
    prompt_sampling_weights,
    rubric_item_weights,
)
from quark_lightning.loop.loop_settings import LoopSettings
from quark_lightning.loop.loop_state import scorer_of
from quark_lightning.loop.metrics import answer_lengths, evaluation_metrics, failing_answers, gate_failures
from quark_lightning.loop.patterns import update_loop_patterns
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.online import BadPatternScorer
from quark_lightning.scorers.rubric import RubricScorer


def sampler_of(trainer: L.Trainer):
    """The datamodule's area-weighted sampler, or None (no curriculum)."""
    return getattr(trainer.datamodule, "sampler", None)


class ClosedLoopSupervision(L.Callback):
    SETTINGS = LoopSettings  # its keys are this callback's config keys (config/groups.py checks them)

    def __init__(self, **settings: Any):
        self.settings = LoopSettings.of(settings)  # validated once; every value out of range named
        self.history: list[dict[str, Any]] = []  # the report record: each evaluation's metrics
        self.weights_history: dict[str, list[tuple[int, float]]] = {}  # dimension -> (step, weight)
        self.reference_cache: dict[str, list[float]] = {}  # prompt id -> its reference answer's scores (K,)
        self.last_report: str | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if self.settings.curriculum and hasattr(trainer.datamodule, "enable_curriculum"):
            # the run's seed (seed_everything) and the rank: different seeds draw different prompt orders
            trainer.datamodule.enable_curriculum(seed=(torch.initial_seed() + trainer.global_rank) % 2**63)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        pl_module.shaping.loop.apply(pl_module.matrix, sampler_of(trainer))  # restored from a checkpoint
        if not self.history:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        for k, name in enumerate(pl_module.matrix.names):
            self.weights_history.setdefault(name, []).append((step, float(pl_module.shaping.weights[k])))
        last = 0 < trainer.max_steps <= step  # on_train_end evaluates the end, changing nothing
        if self.settings.every_n_steps and step % self.settings.every_n_steps == 0 and not last:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        end = self.history[-1] if self.history else None
        if end is None or end["step"] != trainer.global_step or end.get("actions"):
            self.evaluate(trainer, pl_module, update=False)  # the end, under the reward the run ends with
        if trainer.is_global_zero and self.settings.report_dir:
            self._write_summary()

    # ------------------------------------------------------------------ the loop
    def evaluate(self, trainer: L.Trainer, pl_module, update: bool = True) -> dict[str, Any]:
        held_out = self._diagnosis_prompts(trainer)
        acting = update and self.settings.update
        probe = self._probe_prompts(trainer, pl_module.shaping.loop) if acting and self.settings.item_level else []
        rollout = pl_module.engine.generate(  # one batch: held-out answers, then the training probe
            pl_module.policy, pl_module.tokenizer, held_out + probe, 1, greedy=self.settings.greedy
        )
        n = len(held_out)
        prompts, answers = rollout.prompts[:n], rollout.completions[:n]
        with pl_module.shaping.loop.suspended(pl_module.matrix):  # the yardstick: the matrix as configured
            scored = pl_module.matrix.score(prompts, answers)
            reference = self._reference_scores(pl_module, prompts) if self.settings.item_level else None
        metrics = evaluation_metrics(pl_module.matrix, prompts, answers, scored, trainer.global_step, reference)
        metrics["answers"] = answer_lengths(rollout.completion_mask[:n], rollout.truncated[:n])
        metrics["scorers"] = "as configured"  # the yardstick (not the loop's trained reward): module doc
        pl_module.shaping.loop.record_means(metrics)
        if acting:
            metrics["actions"] = self.reward_update(trainer, pl_module, metrics)
            if self.settings.item_level:
                metrics["actions"] += self.update_rule_weights(pl_module, metrics, prompts, scored)
                metrics["actions"] += self.update_loop_patterns(pl_module, metrics, prompts, answers, scored)
                metrics["actions"] += self.update_probe_items(
                    trainer, pl_module, metrics, rollout.prompts[n:], rollout.completions[n:]
                )
        self.history.append(metrics)
        self._log(trainer, pl_module, metrics)
        return metrics

    def reward_update(self, trainer: L.Trainer, pl_module, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        """The per-dimension gains (RewardShaping's buffer) and the area curriculum."""
        shaping = pl_module.shaping
        gains, actions = loop_gains(
            pl_module.matrix.names, metrics, shaping.loop_gain.tolist(), shaping.loop.means, self.settings
        )
        shaping.set_loop_gain(torch.tensor(gains))  # static weights x gain now, or TADW's next update
        sampler = sampler_of(trainer)
        if self.settings.curriculum and sampler is not None:
            before = sampler.shares()
            shaping.loop.area_weights = curriculum_weights(list(sampler.counts), metrics, self.settings)
            shaping.loop.apply_to_sampler(sampler)
            actions += share_actions(before, sampler.shares(), metrics)
        return actions

    def update_rule_weights(self, pl_module, metrics: dict[str, Any], prompts, scored) -> list[dict[str, Any]]:
        """Item-level action on format dimensions: weigh the rules the held-out answers break."""
        loop, actions = pl_module.shaping.loop, []
        for name in pl_module.matrix.names:
            scorer = scorer_of(pl_module.matrix, name, FormatScorer)
            if scorer is None or self.settings.rule_gain == 0:
                continue
            broken: dict[str, list[str]] = {r: [] for r in scorer.rule_weights}
            for prompt, found in zip(prompts, scored.findings[name]):
                for rule in {scorer.rule_of(f) for f in found} & set(broken):
                    broken[rule].append(str(prompt.get("id")))
            current = {r: loop.rule_weights.get(name, {}).get(r, 1.0) for r in scorer.rule_weights}
            loop.rule_weights[name], acts = format_rule_weights(
                current, broken, len(prompts), self._failing(metrics, name), self.settings.rule_gain, name
            )
            actions += acts
        loop.apply_to_scorers(pl_module.matrix)
        return actions

    def update_loop_patterns(self, pl_module, metrics, prompts, answers, scored) -> list[dict[str, Any]]:
        """Item-level action on bad-pattern dimensions: phrases of the failing held-out answers join the
        scorer's pattern list (loop/patterns.py), and expire once no answer shows them."""
        loop, actions = pl_module.shaping.loop, []
        fails = failing_answers(pl_module.matrix, scored)
        ids = [str(p.get("id")) for p in prompts]
        references = [p["reference"] for p in prompts if isinstance(p.get("reference"), str)]
        for name in pl_module.matrix.names:
            if scorer_of(pl_module.matrix, name, BadPatternScorer) is None or not self.settings.patterns["cap"]:
                continue
            loop.loop_patterns[name], acts = update_loop_patterns(
                loop.loop_patterns.get(name, {}),
                metrics["step"],
                list(zip(ids, answers, fails)),
                references,
                **self.settings.patterns,
            )
            actions += [{**a, "dimension": name} for a in acts]
        loop.apply_to_scorers(pl_module.matrix)
        return actions

    def update_probe_items(self, trainer, pl_module, metrics, prompts, answers) -> list[dict[str, Any]]:
        """Item-level actions on the training probe: rubric item weights and prompt sampling weights
        (loop/item_actions.py). No-op without probe answers."""
        if not prompts:
            return []
        matrix, loop, actions = pl_module.matrix, pl_module.shaping.loop, []
        ids = [str(p.get("id")) for p in prompts]
        for name in matrix.names:
            scorer = scorer_of(matrix, name, RubricScorer)
            if scorer is None or self.settings.item_gain == 0:
                continue
            outcomes = {pid: o for pid, o in zip(ids, scorer.outcomes(prompts, answers)) if o}
            loop.item_weights[name], acts = rubric_item_weights(
                loop.item_weights.get(name, {}),
                outcomes,
                self._failing(metrics, name),
                self.settings.item_gain,
                self.settings.max_item_weight,
                name,
            )
            actions += acts
        loop.apply_to_scorers(matrix)  # before the gates judge the probe below
        gates = matrix.gates()
        if sampler_of(trainer) is not None and self.settings.prompt_gain > 0 and gates:
            scored = matrix.score(prompts, answers)
            failed = {pid: [matrix.names[k] for k in gate_failures(scored, gates, i)] for i, pid in enumerate(ids)}
            loop.prompt_weights, acts = prompt_sampling_weights(
                loop.prompt_weights, failed, self.settings.prompt_gain, [matrix.names[k] for k, _ in gates]
            )
            actions += acts
        loop.apply_to_sampler(sampler_of(trainer))
        return actions

    def _failing(self, metrics: dict[str, Any], name: str) -> bool:
        return failing(metrics, name, self.settings.pass_target)

    def _reference_scores(self, pl_module, prompts) -> torch.Tensor | None:
        """(N, K) the matrix's scores of each held-out prompt's reference answer, where the matrix has
        target-less dimensions (reward models) to judge against it (cached per prompt id), else None."""
        matrix = pl_module.matrix
        if not self.settings.reference_targets or all(d.target is not None for d in matrix.dimensions):
            return None
        cache = self.reference_cache
        todo = [p for p in prompts if str(p.get("id")) not in cache and isinstance(p.get("reference"), str)]
        if todo:
            ref = upcast(matrix.score(todo, [p["reference"] for p in todo]).scores)
            for p, row in zip(todo, ref):
                cache[str(p.get("id"))] = row.tolist()
        nan = [float("nan")] * len(matrix.names)
        return torch.tensor([cache.get(str(p.get("id")), nan) for p in prompts])

    # ------------------------------------------------------------------ plumbing
    def _probe_prompts(self, trainer: L.Trainer, loop) -> list[dict[str, Any]]:
        """`probe_prompts` training prompts for the item-level actions: those with an active item or
        sampling weight first (so a change is undone as soon as its failure stops), then the next ones
        of a fixed rotation (the same on every rank)."""
        dm = trainer.datamodule
        if dm is None or not self.settings.probe_prompts or not hasattr(dm, "calibration_records"):
            return []
        train = dm.calibration_records()
        active = set(loop.prompt_weights) | {p for w in loop.item_weights.values() for p in w}
        first = [r for r in train if str(r.get("id")) in active][: self.settings.probe_prompts]
        rest = [r for r in train if str(r.get("id")) not in active]
        take = min(self.settings.probe_prompts - len(first), len(rest))
        picked = [rest[(loop.probe_cursor + j) % len(rest)] for j in range(take)]
        loop.probe_cursor = (loop.probe_cursor + take) % max(1, len(rest))
        return first + picked

    def _diagnosis_prompts(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        dm = trainer.datamodule
        prompts = dm.val_records() if dm is not None else []
        if not prompts:
            prompts = dm.calibration_records() if dm is not None else []
        return prompts[: self.settings.num_prompts]

    def _log(self, trainer: L.Trainer, pl_module, metrics: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return

        step, dims = metrics["step"], metrics["dimensions"]
        scalars = {f"eval/{n}/pass_rate": r["pass_rate"] for n, r in dims.items() if r["count"]}
        scalars |= {f"eval/{n}/mean": r["mean"] for n, r in dims.items() if r["count"]}
        scalars |= {f"eval/category/{c}/pass_rate": r["pass_rate"] for c, r in metrics["categories"].items()}
        scalars |= {f"eval/answers/{k}": v for k, v in metrics.get("answers", {}).items()}
        lines = [f"- {d['dimension']}: {d['finding']} ({d['share']:.0%})" for d in metrics["diagnosis"][:10]]
        lines += [f"- action: {a['reason']}" for a in metrics["actions"]]
        log_scalars(trainer, scalars, step)  # every logger (TensorBoard, CSV, W&B, MLflow)
        log_text(trainer, "eval/diagnosis", "\n".join(lines) or "- no findings", step)
        for a in metrics["actions"]:
            print(f"[closed loop, step {step}] {a['reason']}")
        if self.settings.write_reports and self.settings.report_dir:
            out = os.path.join(self.settings.report_dir, f"step_{step:05d}")
            self.last_report = write_report(self.history, out, self.weights_history, title=f"Evaluation at step {step}")

    def _write_summary(self) -> None:
        os.makedirs(self.settings.report_dir, exist_ok=True)  # write_reports=false made no step reports
        path = os.path.join(self.settings.report_dir, "summary.md")
        first, last = self.history[0], self.history[-1]
        table = summary_table(first, last)
        with open(path, "w") as fh:
            fh.write(f"# Start (step {first['step']}) vs end (step {last['step']})\n\n{table}\n")
        print(f"\nClosed-loop evaluation, start vs end:\n{table}\nReports: {self.settings.report_dir} (summary: {path})")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "weights_history": self.weights_history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.weights_history = {k: [tuple(x) for x in v] for k, v in state_dict.get("weights_history", {}).items()}
