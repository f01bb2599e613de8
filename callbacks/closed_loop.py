"""Closed-loop supervision: observable metrics -> attributable diagnosis -> reward update.

Every `every_n_steps` optimizer steps (and at the start and the end of training) the policy answers a
held-out diagnosis split (greedy decoding by default); the matrix scores the answers and
`quark_lightning.loop.metrics.evaluation_metrics` turns them into per-dimension / category / area
metrics and a diagnosis (the findings behind the failures, with examples). Then the loop changes what is
optimized next (interpretation; the paper names the loop, not its rules):

- weights: a dimension whose held-out pass rate is below `pass_target` gets a loop gain
  g_k = 1 + `gain_strength` * violation_rate_k; a dimension at or above it gets g_k = 1 (it stops being
  pushed). With TADW the gain multiplies the tri-factor product (its weakness and risk signals); with
  static weights the weights become base_weight_k * g_k.
- letting go: a failing dimension whose held-out mean has moved less than `min_change` over the last
  `patience` evaluations cannot (yet) be pushed: instead of its gain it gets g_k = 1 + (g_prev - 1) *
  `gain_decay`, decaying back toward 1 (the weight goes to dimensions the policy can still move), with
  an action saying so. As soon as it moves again (range >= `min_change`), it gets its full gain back.
- format rules (item level): for a failing format dimension (a FormatScorer), each rule's weight
  inside the format score becomes 1 + `rule_gain` * (share of held-out answers breaking it), so the rules
  being broken count more in the next steps' format reward; it is back to 1 once the rule is no longer
  broken (or the dimension passes). Each change is an action naming the rule, its break rate and the
  held-out answers that broke it (evidence); the weights are in the checkpoint.
- reward-model dimensions (no absolute target): each held-out answer is judged against the reference
  answer's score on the same prompt (`reference_targets`): it passes where it scores at least as high,
  so the pass rate is "share of answers as good as the reference" and the dimension gets a gain like the
  others (loop/metrics.py). The reference scores are computed once per prompt.
- online bad patterns (item level): phrases over-represented in the failing held-out answers (a gate
  failed, or fewer than half of the answer's targeted dimensions passed) relative to passing answers
  (log-odds, loop/patterns.py), in no reference and not made only of a reference's words, join the bad-pattern scorer's list with their provenance (step, evidence ids, z),
  at most `max_mined_patterns`, and expire after `pattern_expiry` evaluations in which no held-out answer
  shows them (loop/patterns.py).
- rubric items and prompts (item level): held-out prompts are never trained on, so re-weighting their
  items would change nothing training sees. Each evaluation therefore also answers `probe_prompts`
  training prompts (greedy, outside any gradient step; those with an active weight first, then a fixed
  rotation): a missed essential or a hit pitfall of a probe answer weighs more inside that prompt's
  rubric score, bonus items only once the essentials are met, back to 1 when met; a probed prompt whose
  answer fails a gate (an ignored red flag) is drawn 1 + `prompt_gain` times as often, back to 1 once it
  clears (loop/item_actions.py). The held-out split stays the measurement: probe answers never enter the
  metrics.
- `item_level: false` keeps only the per-dimension gains against absolute targets and the area
  curriculum (the loop before item-level actions); `update: false` evaluates and reports, changing
  nothing (the no-loop baseline of benchmarks/closed_loop.py).
- curriculum: each clinical area's sampling weight becomes (1 - pass_rate_area + `curriculum_floor`) **
  `curriculum_strength`, so weak areas are drawn more often (`AreaWeightedSampler` of the datamodule).

Every change is recorded as an action with its reason (logged to TensorBoard text, printed, and written
to the report), e.g. `format_rules: held-out pass rate 0.12 < 0.90 (top finding 'length: # words,
below the minimum of #', 100% of answers); loop gain 1.00 -> 1.88`. Each evaluation writes a report
(Markdown, PNG plots, metrics JSON) under `report_dir/step_<N>/`; the end of the run writes
`report_dir/summary.md` (every dimension and category, start vs end) and prints where it is. The
history, area weights and every item-level weight and mined phrase are in the checkpoint (the callback's
state); the loop gain is RewardShaping's `loop_gain` buffer (the module's state), never copied here.

Every rank evaluates the same prompts with greedy decoding, so every rank takes the same actions.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch

from quark_lightning.infra.precision import upcast
from quark_lightning.loop.item_actions import prompt_sampling_weights, rubric_item_weights
from quark_lightning.loop.loop_settings import LoopSettings
from quark_lightning.loop.metrics import evaluation_metrics, pass_mask


def scorer_of(pl_module, name: str, kind: type):
    """The scorer behind dimension `name` when it is a `kind`, else None."""
    scorer = pl_module.matrix.dimensions[pl_module.matrix.names.index(name)].scorer
    return scorer if isinstance(scorer, kind) else None


def format_scorer(pl_module, name: str):
    """The FormatScorer behind dimension `name`, or None when it is another kind of scorer."""
    from quark_lightning.scorers.format import FormatScorer

    return scorer_of(pl_module, name, FormatScorer)


def gate_failures(scored, gates, i: int) -> list[int]:
    """Indices k of the gated dimensions whose gate answer i fails (a failed scorer counts as failing)."""
    out = []
    for k, gate in gates:
        score = float(scored.scores[i, k])
        if bool(scored.failed[i, k]) or (score == score and score < gate.below):  # NaN: not applicable
            out.append(k)
    return out


def failing_answers(matrix, scored) -> list[bool]:
    """Per answer: it fails a gate, or meets fewer than half of its applicable targeted dimensions (an
    answer no targeted dimension applies to fails only through a gate)."""
    passed = pass_mask(upcast(scored.scores), [d.target for d in matrix.dimensions])  # (N, K)
    targeted = torch.tensor([d.target is not None for d in matrix.dimensions])
    applicable = (~torch.isnan(scored.scores) & targeted).sum(1)  # (N,)
    low = (passed.sum(1) < 0.5 * applicable) & (applicable > 0)  # (N,)
    gates = matrix.gates()
    return [bool(low[i]) or bool(gate_failures(scored, gates, i)) for i in range(len(low))]


class ClosedLoopSupervision(L.Callback):
    SETTINGS = LoopSettings  # its keys are this callback's config keys (config/groups.py checks them)

    def __init__(self, **settings: Any):
        self.settings = LoopSettings.of(settings)  # validated once; every value out of range named
        self.item_weights: dict[str, dict[str, dict[str, float]]] = {}  # rubric dim -> prompt -> item -> w
        self.prompt_weights: dict[str, float] = {}  # training prompt id -> sampling multiplier
        self.loop_patterns: dict[str, dict[str, dict]] = {}  # bad-pattern dim -> phrase -> provenance
        self.probe_cursor = 0  # where the rotating probe of training prompts continues
        self._reference_cache: dict[str, list[float]] = {}  # prompt id -> reference scores (K,)
        self.rule_weights: dict[str, dict[str, float]] = {}  # format dimension -> rule -> weight
        self.history: list[dict[str, Any]] = []
        self.weights_history: dict[str, list[tuple[int, float]]] = {}
        self.area_weights: dict[str, float] = {}
        self.last_report: str | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if (
            self.settings.curriculum
            and trainer.datamodule is not None
            and hasattr(trainer.datamodule, "enable_curriculum")
        ):
            # the run's seed (seed_everything) and the rank: different seeds draw different prompt orders
            trainer.datamodule.enable_curriculum(seed=(torch.initial_seed() + trainer.global_rank) % 2**63)

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.area_weights and getattr(trainer.datamodule, "sampler", None) is not None:
            trainer.datamodule.sampler.set_area_weights(self.area_weights)  # restored from a checkpoint
        for name, weights in self.rule_weights.items():  # restored from a checkpoint
            format_scorer(pl_module, name).set_rule_weights(weights)
        self._restore_item_state(trainer, pl_module)
        if not self.history:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        for k, name in enumerate(pl_module.matrix.names):
            self.weights_history.setdefault(name, []).append(
                (trainer.global_step, float(pl_module.shaping.weights[k]))
            )
        if self.settings.every_n_steps and trainer.global_step % self.settings.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self.history or self.history[-1]["step"] != trainer.global_step:
            self.evaluate(trainer, pl_module, update=False)
        if trainer.is_global_zero and len(self.history) >= 1 and self.settings.report_dir:
            from quark_lightning.evaluation.report import summary_table

            os.makedirs(self.settings.report_dir, exist_ok=True)  # write_reports=false made no step reports
            path = os.path.join(self.settings.report_dir, "summary.md")
            table = summary_table(self.history[0], self.history[-1])
            with open(path, "w") as fh:
                fh.write(
                    f"# Start (step {self.history[0]['step']}) vs end (step {self.history[-1]['step']})\n\n"
                )
                fh.write(table + "\n")
            print(
                f"\nClosed-loop evaluation, start vs end:\n{table}\nReports: {self.settings.report_dir} (summary: {path})"
            )

    # ------------------------------------------------------------------ the loop
    def evaluate(self, trainer: L.Trainer, pl_module, update: bool = True) -> dict[str, Any]:
        held_out = self._diagnosis_prompts(trainer)
        acting = update and self.settings.update
        probe = self._probe_prompts(trainer) if acting and self.settings.item_level else []
        rollout = pl_module.engine.generate(  # one batch: held-out answers, then the training probe
            pl_module.policy, pl_module.tokenizer, held_out + probe, 1, greedy=self.settings.greedy
        )
        n = len(held_out)
        prompts, answers = rollout.prompts[:n], rollout.completions[:n]
        scored = pl_module.matrix.score(prompts, answers)
        reference = self._reference_scores(pl_module, prompts) if self.settings.item_level else None
        metrics = evaluation_metrics(
            pl_module.matrix, prompts, answers, scored, trainer.global_step, reference
        )
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
        actions = self._update_gains(pl_module, metrics)
        if self.settings.curriculum and getattr(trainer.datamodule, "sampler", None) is not None:
            actions += self._update_curriculum(trainer.datamodule.sampler, metrics)
        return actions

    def _update_gains(self, pl_module, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        names = pl_module.matrix.names
        old = pl_module.shaping.loop_gain.tolist()  # the gain lives in RewardShaping (its checkpoint)
        new, actions = [], []
        top = {}
        for d in metrics["diagnosis"]:
            top.setdefault(d["dimension"], d)
        for k, name in enumerate(names):
            rate = metrics["dimensions"][name]["pass_rate"]
            failing = rate == rate and rate < self.settings.pass_target  # NaN (not applicable) never fails
            gain = 1.0 + self.settings.gain_strength * (1.0 - rate) if failing else 1.0
            stuck = self._not_moving(name, metrics) if failing else None
            if stuck is not None:  # below target but not responding: let go of it
                gain = 1.0 + (old[k] - 1.0) * self.settings.gain_decay
            new.append(gain)
            if abs(gain - old[k]) > 1e-6:
                why = (
                    f"held-out pass rate {rate:.2f} < {self.settings.pass_target:.2f}"
                    if failing
                    else f"held-out pass rate {rate:.2f} >= {self.settings.pass_target:.2f}: stops being pushed"
                )
                if stuck is not None:
                    why += f", but {stuck}: gain decayed toward 1"
                elif failing and name in top:
                    why += f" (top finding '{top[name]['finding']}', {top[name]['share']:.0%} of answers)"
                actions.append(
                    {
                        "kind": "loop_gain",
                        "target": name,
                        "value": gain,
                        "reason": f"{name}: {why}; loop gain {old[k]:.2f} -> {gain:.2f}",
                    }
                )
        self._apply_gain(pl_module, torch.tensor(new))
        return actions

    def update_rule_weights(
        self, pl_module, metrics: dict[str, Any], prompts, scored
    ) -> list[dict[str, Any]]:
        """Item-level action on format dimensions: weigh the rules the held-out answers break."""
        actions = []
        for name in pl_module.matrix.names:
            scorer = format_scorer(pl_module, name)
            if scorer is None or self.settings.rule_gain == 0:
                continue
            rate = metrics["dimensions"][name]["pass_rate"]
            failing = rate == rate and rate < self.settings.pass_target
            broken: dict[str, list[str]] = {r: [] for r in scorer.rule_weights}
            for prompt, found in zip(prompts, scored.findings[name]):
                for rule in {scorer.rule_of(f) for f in found} & set(broken):
                    broken[rule].append(str(prompt.get("id")))
            n = max(1, len(prompts))
            old = dict(scorer.rule_weights)
            new = {r: 1.0 + self.settings.rule_gain * len(ids) / n if failing else 1.0 for r, ids in broken.items()}
            scorer.set_rule_weights(new)
            self.rule_weights[name] = dict(new)
            for rule, weight in new.items():
                if abs(weight - old[rule]) > 1e-6:
                    ids = broken[rule]
                    why = (
                        f"broken by {len(ids)} of {n} held-out answers ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
                        if ids and failing
                        else ("no longer broken" if failing else f"{name} passes its target")
                    )
                    actions.append(
                        {
                            "kind": "format_rule_weight",
                            "target": f"{name}.{rule}",
                            "value": weight,
                            "evidence": ids,
                            "reason": f"{name} rule '{rule}': {why}; rule weight {old[rule]:.2f} -> {weight:.2f}",
                        }
                    )
        return actions

    def update_loop_patterns(self, pl_module, metrics, prompts, answers, scored) -> list[dict[str, Any]]:
        """Item-level action on bad-pattern dimensions: phrases of the failing held-out answers join the
        scorer's pattern list (loop/patterns.py), and expire once no answer shows them."""
        from quark_lightning.loop.patterns import update_loop_patterns
        from quark_lightning.scorers.online import BadPatternScorer

        failing = failing_answers(pl_module.matrix, scored)
        ids = [str(p.get("id")) for p in prompts]
        references = [p["reference"] for p in prompts if isinstance(p.get("reference"), str)]
        actions = []
        for name in pl_module.matrix.names:
            scorer = scorer_of(pl_module, name, BadPatternScorer)
            if scorer is None or not self.settings.patterns["cap"]:
                continue
            state, acts = update_loop_patterns(
                self.loop_patterns.get(name, {}),
                metrics["step"],
                list(zip(ids, answers, failing)),
                references,
                **self.settings.patterns,
            )
            self.loop_patterns[name] = state
            scorer.set_loop_patterns(state)
            actions += [{**a, "dimension": name} for a in acts]
        return actions

    def update_probe_items(self, trainer, pl_module, metrics, prompts, answers) -> list[dict[str, Any]]:
        """Item-level actions on the training probe: rubric item weights and prompt sampling weights
        (loop/item_actions.py). No-op without probe answers."""
        from quark_lightning.scorers.rubric import RubricScorer

        if not prompts:
            return []
        actions = []
        ids = [str(p.get("id")) for p in prompts]
        for name in pl_module.matrix.names:
            scorer = scorer_of(pl_module, name, RubricScorer)
            if scorer is None or self.settings.item_gain == 0:
                continue
            outcomes = {pid: o for pid, o in zip(ids, scorer.outcomes(prompts, answers)) if o}
            new, acts = rubric_item_weights(
                self.item_weights.get(name, {}),
                outcomes,
                self._failing(metrics, name),
                self.settings.item_gain,
                self.settings.max_item_weight,
                name,
            )
            self.item_weights[name] = new
            scorer.set_item_weights(new)
            actions += acts
        sampler = getattr(trainer.datamodule, "sampler", None)
        gates = pl_module.matrix.gates()
        if sampler is not None and self.settings.prompt_gain > 0 and gates:
            scored = pl_module.matrix.score(prompts, answers)
            failed = {
                pid: [pl_module.matrix.names[k] for k in gate_failures(scored, gates, i)]
                for i, pid in enumerate(ids)
            }
            gated = [pl_module.matrix.names[k] for k, _ in gates]
            self.prompt_weights, acts = prompt_sampling_weights(
                self.prompt_weights, failed, self.settings.prompt_gain, gated
            )
            sampler.set_prompt_weights(self.prompt_weights)
            actions += acts
        return actions

    def _failing(self, metrics: dict[str, Any], name: str) -> bool:
        rate = metrics["dimensions"][name]["pass_rate"]
        return rate == rate and rate < self.settings.pass_target  # NaN (not applicable) never fails

    def _reference_scores(self, pl_module, prompts) -> torch.Tensor | None:
        """(N, K) the matrix's scores of each held-out prompt's reference answer, where the matrix has
        target-less dimensions (reward models) to judge against it (cached per prompt id), else None."""
        names = pl_module.matrix.names
        if not self.settings.reference_targets or all(d.target is not None for d in pl_module.matrix.dimensions):
            return None
        todo = [
            p
            for p in prompts
            if str(p.get("id")) not in self._reference_cache and isinstance(p.get("reference"), str)
        ]
        if todo:
            ref = upcast(pl_module.matrix.score(todo, [p["reference"] for p in todo]).scores)
            for p, row in zip(todo, ref):
                self._reference_cache[str(p.get("id"))] = row.tolist()
        nan = [float("nan")] * len(names)
        return torch.tensor([self._reference_cache.get(str(p.get("id")), nan) for p in prompts])

    def _not_moving(self, name: str, metrics: dict[str, Any]) -> str | None:
        """Why `name` counts as not responding (its held-out mean moved < min_change over the last
        `patience` evaluations, this one included), or None when it moves or the history is shorter."""
        means = [
            h["dimensions"][name]["mean"]
            for h in self.history[-(self.settings.patience - 1) :]
            if name in h["dimensions"]
        ]
        means.append(metrics["dimensions"][name]["mean"])
        if len(means) < self.settings.patience or any(m != m for m in means):
            return None
        if max(means) - min(means) >= self.settings.min_change:
            return None
        return f"its held-out mean stayed within {min(means):.3f}..{max(means):.3f} over {self.settings.patience} evaluations"

    def _apply_gain(self, pl_module, gain: torch.Tensor) -> None:
        """The module's RewardShaping owns the gain: static weights x gain now, or TADW's next update."""
        pl_module.shaping.set_loop_gain(gain)

    def _update_curriculum(self, sampler, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        before = sampler.shares()
        weights = {}
        for area in sampler.counts:
            rate = metrics["areas"].get(area, {}).get("pass_rate")
            if (
                rate is not None and rate == rate
            ):  # areas the held-out split did not cover keep a neutral weight
                weights[area] = (1.0 - rate + self.settings.curriculum_floor) ** self.settings.curriculum_strength
        neutral = sum(weights.values()) / len(weights) if weights else 1.0
        sampler.set_area_weights({a: weights.get(a, neutral) for a in sampler.counts})
        self.area_weights = dict(sampler.area_weights)
        after = sampler.shares()
        actions = []
        for area in sorted(after, key=lambda a: -after[a]):
            if abs(after[area] - before[area]) > 0.01:
                rate = metrics["areas"].get(area, {}).get("pass_rate", float("nan"))
                why = (
                    f"held-out pass rate {rate:.2f}"
                    if rate == rate
                    else "not in the held-out sample (neutral)"
                )
                actions.append(
                    {
                        "kind": "sampling",
                        "target": area,
                        "value": after[area],
                        "reason": f"{area}: {why}; sampling share {before[area]:.2f} -> {after[area]:.2f}",
                    }
                )
        return actions

    # ------------------------------------------------------------------ plumbing
    def _restore_item_state(self, trainer: L.Trainer, pl_module) -> None:
        """Item-level state restored from a checkpoint goes back into the scorers and the sampler."""
        for name, weights in self.item_weights.items():
            pl_module.matrix.dimensions[pl_module.matrix.names.index(name)].scorer.set_item_weights(weights)
        for name, patterns in self.loop_patterns.items():
            pl_module.matrix.dimensions[pl_module.matrix.names.index(name)].scorer.set_loop_patterns(patterns)
        sampler = getattr(trainer.datamodule, "sampler", None)
        if self.prompt_weights and sampler is not None:
            sampler.set_prompt_weights(self.prompt_weights)

    def _probe_prompts(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        """`probe_prompts` training prompts for the item-level actions: those with an active item or
        sampling weight first (so a change is undone as soon as its failure stops), then the next ones
        of a fixed rotation (the same on every rank)."""
        dm = trainer.datamodule
        if dm is None or not self.settings.probe_prompts or not hasattr(dm, "calibration_records"):
            return []
        train = dm.calibration_records()
        active = set(self.prompt_weights) | {p for w in self.item_weights.values() for p in w}
        first = [r for r in train if str(r.get("id")) in active][: self.settings.probe_prompts]
        rest = [r for r in train if str(r.get("id")) not in active]
        take = min(self.settings.probe_prompts - len(first), len(rest))
        picked = [rest[(self.probe_cursor + j) % len(rest)] for j in range(take)]
        self.probe_cursor = (self.probe_cursor + take) % max(1, len(rest))
        return first + picked

    def _diagnosis_prompts(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        dm = trainer.datamodule
        prompts = dm.val_records() if dm is not None else []
        if not prompts:
            prompts = dm.calibration_records() if dm is not None else []
        return prompts[: self.settings.num_prompts]

    def _log(self, trainer: L.Trainer, pl_module, metrics: dict[str, Any]) -> None:
        step = metrics["step"]
        scalars = {
            f"eval/{n}/pass_rate": r["pass_rate"] for n, r in metrics["dimensions"].items() if r["count"]
        }
        scalars |= {f"eval/{n}/mean": r["mean"] for n, r in metrics["dimensions"].items() if r["count"]}
        scalars |= {f"eval/category/{c}/pass_rate": r["pass_rate"] for c, r in metrics["categories"].items()}
        lines = [f"- {d['dimension']}: {d['finding']} ({d['share']:.0%})" for d in metrics["diagnosis"][:10]]
        lines += [f"- action: {a['reason']}" for a in metrics["actions"]]
        if not trainer.is_global_zero:
            return
        from quark_lightning.infra.loggers import log_scalars, log_text

        log_scalars(trainer, scalars, step)  # every logger (TensorBoard, CSV, W&B, MLflow)
        log_text(trainer, "eval/diagnosis", "\n".join(lines) or "- no findings", step)
        for a in metrics["actions"]:
            print(f"[closed loop, step {step}] {a['reason']}")
        if self.settings.write_reports and self.settings.report_dir:
            from quark_lightning.evaluation.report import write_report

            out = os.path.join(self.settings.report_dir, f"step_{step:05d}")
            self.last_report = write_report(
                self.history, out, self.weights_history, title=f"Evaluation at step {step}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "weights_history": self.weights_history,
            "area_weights": self.area_weights,
            "rule_weights": self.rule_weights,
            "item_weights": self.item_weights,
            "prompt_weights": self.prompt_weights,
            "loop_patterns": self.loop_patterns,
            "probe_cursor": self.probe_cursor,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.weights_history = {
            k: [tuple(x) for x in v] for k, v in state_dict.get("weights_history", {}).items()
        }
        self.area_weights = dict(state_dict.get("area_weights", {}))
        self.rule_weights = {k: dict(v) for k, v in state_dict.get("rule_weights", {}).items()}
        self.item_weights = {
            d: {p: dict(items) for p, items in w.items()}
            for d, w in state_dict.get("item_weights", {}).items()
        }
        self.prompt_weights = dict(state_dict.get("prompt_weights", {}))
        self.loop_patterns = {d: dict(p) for d, p in state_dict.get("loop_patterns", {}).items()}
        self.probe_cursor = int(state_dict.get("probe_cursor", 0))
