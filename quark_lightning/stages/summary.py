"""`<run_dir>/pipeline_summary.md` (and `.json`): what each stage did, and the matrix at the end of RL.

The matrix table is the RL stage's closed-loop evaluation on held-out prompts: its first evaluation is at
step 0, when the policy still is the cloned reference, and its last is at the end of RL.
"""

from __future__ import annotations

import json
import os
from typing import Any

from quark_lightning.evaluation.report import summary_table
from quark_lightning.stages.context import PipelineContext, StageSpec
from quark_lightning.stages.export import last_evaluation

KEY_OUTPUTS = ("policy", "adapter", "reward_model", "rfn_statistics", "export_dir")


def _highlights(outputs: dict[str, Any]) -> str:
    parts = []
    if outputs.get("examples"):
        parts.append("examples " + ", ".join(f"{k} {v}" for k, v in outputs["examples"].items()))
    if outputs.get("held_out_nll_before") is not None:
        parts.append(
            f"held-out NLL {outputs['held_out_nll_before']:.3f} → {outputs['held_out_nll_after']:.3f}"
        )
    after = outputs.get("held_out_after")
    if after:
        parts.append(f"held-out pair accuracy {after.get('pair_accuracy', float('nan')):.3f}")
        if after.get("length_controlled_accuracy") is not None:
            parts.append(f"length-controlled accuracy {after['length_controlled_accuracy']:.3f}")
    reward = outputs.get("reward")
    if reward:
        parts.append(
            f"reward {reward['start']:+.3f} → {reward['end']:+.3f} (mean of first/last steps, {reward['steps']} steps)"
        )
    if outputs.get("export_dir"):
        parts.append(", ".join(k for k in ("model", "adapter", "merged") if k in outputs) + ", model card")
    if outputs.get("status"):
        off = [k for k, v in outputs["status"].items() if v != "ok"]
        parts.append(f"{outputs.get('samples')} answers" + (f"; not ok: {', '.join(off)}" if off else ""))
    return "; ".join(parts)


def write_summary(ctx: PipelineContext, specs: list[StageSpec]) -> str:
    rows = ["| stage | kind | this run | seconds | highlights |", "|---|---|---|---|---|"]
    for spec in specs:
        rec = ctx.records.get(spec.name)
        if rec is None:
            rows.append(f"| {spec.name} | {spec.kind} | not run | – | |")
            continue
        rows.append(
            f"| {rec.name} | {rec.kind} | {rec.status} | {rec.seconds:.0f} | {_highlights(rec.outputs)} |"
        )
    sections = ["# Pipeline summary", "\n".join(rows)]
    rl = ctx.latest("eval_dir", kinds=("grpo",))
    evaluation = last_evaluation(rl.outputs["eval_dir"]) if rl else None
    if evaluation:
        sections.append(
            f"## The matrix at the end of RL (step {evaluation['last']['step']}) vs the cloned reference "
            f"(step {evaluation['first']['step']})\n\nHeld-out greedy answers "
            f"({evaluation['last'].get('num_samples', '?')}), scored by every dimension of the matrix; category "
            "rows are the mean pass rate of their dimensions.\n\n"
            + summary_table(evaluation["first"], evaluation["last"])
        )
    text = "\n\n".join(sections) + "\n"
    path = os.path.join(ctx.root, "pipeline_summary.md")
    with open(path, "w") as fh:
        fh.write(text)
    with open(os.path.join(ctx.root, "pipeline_summary.json"), "w") as fh:
        records = {n: {"kind": r.kind, "status": r.status, "seconds": r.seconds, "outputs": r.outputs}
                   for n, r in ctx.records.items()}  # fmt: skip
        json.dump({"stages": records, "evaluation": evaluation}, fh, indent=2, default=str)
    print("\n" + text + f"\n(written to {path})")
    return path
