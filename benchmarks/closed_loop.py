"""Does the closed loop help a real model? SmolLM2-135M-Instruct with the loop off, scalar, and item level.

    OMP_NUM_THREADS=1 python benchmarks/closed_loop.py                  # arms none scalar item, seeds 0 1
    python benchmarks/closed_loop.py --jobs 2                          # two arms at a time, one core each
    python benchmarks/closed_loop.py --smoke                           # the same pipeline on the tiny model

Each arm (loop variant, seed) is one `python train.py +experiment=closed_loop_real seed=S ...` run from
the same base (SmolLM2, LoRA, RFN + TADW, 16 steps, the loop evaluating at steps 0, 4, 8, 12, 16), the arms
differing only in what the loop may change:

- `none`: `callbacks.closed_loop.update=false`: it evaluates and diagnoses, and changes nothing;
- `scalar`: `callbacks.closed_loop.item_level=false`: per-dimension loop gain and area curriculum only;
- `item`: the full loop (defaults): also the item-level actions (format-rule weights, ...).

After training, greedy answers to the WHOLE held-out split (30 questions with `data.val_fraction` 0.2,
never trained on) are scored by the full `medical` matrix exactly as in benchmarks/efficacy_real.py (its
`heldout_eval`), and the base model once the same way. The loop diagnoses the first `num_prompts` (12) of
those questions, so its actions are chosen on them: the report also gives the questions the loop never
diagnosed (12..29) on their own. Per arm, the mean over seeds with (min..max): per-dimension pass rate and
mean, category pass rates, red-flag triage rate (share of red-flag questions whose answer passes the
`triage` dimension, i.e. directs to urgent care now; results cached before that dimension existed fall
back to `safety`, which then held the red-flag check), answers cut at the length cap; and from the run's
closed-loop reports (`<run_dir>/eval/step_*/metrics.json`) the loop's actions by kind and its final gains
(checkpoint).

Resumable: an arm's result is cached in `<work>/<arm>_s<seed>/heldout.json`; an interrupted training run
resumes from its last checkpoint (`ckpt_path=last`, every 4 steps). The report is rewritten after every
arm, with the arms not done yet marked, so a partial result can be committed. Run it in the background:

    OMP_NUM_THREADS=1 nohup python benchmarks/closed_loop.py > closed_loop.log 2>&1 &

Writes benchmarks/results/closed_loop.{json,md} (with `--smoke`: `<work>/closed_loop.{json,md}` in a
temporary work directory, never benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._models import machine, md_table  # noqa: E402
from benchmarks.heldout import (  # noqa: E402
    EVAL_MATRIX,
    RESULTS,
    compose,
    final_weights,
    heldout_eval,
    pct,
    run_training,
    spread,
    worst_change,
)

EXPERIMENT = "closed_loop_real"
ARMS: dict[str, list[str]] = {
    "none": ["callbacks.closed_loop.update=false"],
    "scalar": ["callbacks.closed_loop.item_level=false"],
    "item": [],
}
ARM_TEXT = {
    "none": "evaluates, changes nothing (`update=false`)",
    "scalar": "per-dimension loop gain (absolute targets only) + area curriculum (`item_level=false`)",
    "item": "full loop, item-level actions (defaults)",
}
# --smoke: the same pipeline on the tiny random model of the tests, a matrix without reward models, an
# evaluation every step so that 2 steps still take actions, short answers.
SMOKE_MATRIX = "rules_only"
SMOKE_OVERRIDES = [
    "model=tiny",
    "rollout.max_new_tokens=24",
    "optimization.normalization.calibration_prompts=4",
    "callbacks.closed_loop.every_n_steps=1",
    "callbacks.checkpoint.every_n_train_steps=1",
]


def run_name(arm: str, seed: int) -> str:
    return f"{arm}_s{seed}"


def child_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


# ---------------------------------------------------------------------------------------------- training
def train_arm(work: Path, arm: str, seed: int, common: list[str]) -> Path:
    run_dir = work / run_name(arm, seed)
    if (run_dir / "train.done").exists():
        return run_dir
    command = [
        sys.executable, str(REPO / "train.py"), *common, f"seed={seed}", *ARMS[arm],
        f"run_dir={run_dir}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    return run_training(run_dir, command, env=child_env())


# ---------------------------------------------------------------------------------------------- the loop's record
def loop_record(run_dir: Path, names: list[str]) -> dict[str, Any]:
    """What the loop did in one run: actions by kind (over every evaluation), evaluations, final gains.

    The history is the last step report's `metrics.json` (each report holds the whole history, restored
    from the checkpoint on a resume); the gains are the callback's state in the last checkpoint."""
    reports = sorted((run_dir / "eval").glob("step_*/metrics.json"))
    history = json.loads(reports[-1].read_text())["history"] if reports else []
    kinds = Counter(a.get("kind", "?") for h in history for a in h.get("actions") or [])
    gains = None
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        gain = saved.get("state_dict", {}).get("shaping.loop_gain")  # RewardShaping owns the gain
        if gain is None:  # a checkpoint from before: the closed loop kept its own copy
            loop = next(
                (v for k, v in saved.get("callbacks", {}).items() if "ClosedLoopSupervision" in str(k)), None
            )
            gain = (loop or {}).get("gain")
        if gain is not None:
            gains = dict(zip(names, [float(g) for g in gain]))
    if gains is None:  # no checkpoint state: every gain change is an action, the last one is the gain
        gains = {n: 1.0 for n in names}
        for h in history:
            for a in h.get("actions") or []:
                if a.get("kind") == "loop_gain":
                    gains[a["target"]] = float(a["value"])
    return {
        "evaluations": [h.get("step") for h in history],
        "diagnosed_per_evaluation": history[0].get("num_samples") if history else None,
        "actions": dict(sorted(kinds.items())),
        "actions_total": sum(kinds.values()),
        "final_gains": gains,
    }


# ---------------------------------------------------------------------------------------------- subsets
def subset_metrics(result: dict, prompts: list[dict], rows: list[int]) -> dict[str, Any]:
    """The held-out metrics of `result` restricted to the questions `rows`, from its per-answer scores
    (the same functions as evaluation_metrics, no rescoring)."""
    from quark_lightning.loop.metrics import category_metrics, dimension_metrics, pass_mask

    names = result["dimension_names"]
    dims = [
        SimpleNamespace(name=n, category=result["dimensions"][n]["category"], target=result["dimensions"][n]["target"])
        for n in names
    ]  # fmt: skip
    scores = torch.tensor(
        [[math.nan if v is None else v for v in result["samples"][i]["scores"]] for i in rows],
        dtype=torch.float32,
    )
    passed = pass_mask(scores, [d.target for d in dims])
    per_dim = dimension_metrics(SimpleNamespace(dimensions=dims), scores, passed)
    triage = names.index("triage" if "triage" in names else "safety")  # safety held triage before the split
    red = [j for j, i in enumerate(rows) if prompts[i].get("red_flags")]
    return {
        "num_prompts": len(rows),
        "ids": [result["samples"][i]["id"] for i in rows],
        "dimensions": per_dim,
        "categories": category_metrics(per_dim),
        "red_flag_prompts": len(red),
        "red_flag_triage_rate": (sum(bool(passed[j, triage]) for j in red) / len(red)) if red else math.nan,
    }


def heldout_prompts(cfg) -> list[dict]:
    from quark_lightning.cli.run import build_datamodule

    datamodule = build_datamodule(cfg)
    datamodule.load()
    datamodule.setup("fit")
    return datamodule.val_records()


def evaluate(cfg, policy: str | None, run_dir: Path, diagnosed: int) -> dict[str, Any]:
    """heldout_eval (cached in run_dir/heldout.json) + the never-diagnosed subset + the loop's record."""
    out_file = run_dir / "heldout.json"
    result = heldout_eval(cfg, policy, out_file)
    if "never_diagnosed" in result and (policy is None or "loop" in result):
        return result
    prompts = heldout_prompts(cfg)
    ids = [s["id"] for s in result["samples"]]
    if ids != [p["id"] for p in prompts]:
        raise SystemExit(f"{out_file}: its answers are not the held-out split of this configuration")
    result["never_diagnosed"] = subset_metrics(result, prompts, list(range(diagnosed, len(prompts))))
    # the whole split's rate from the `triage` dimension (heldout_eval counts it on `safety`)
    whole = subset_metrics(result, prompts, list(range(len(prompts))))
    result["red_flag_triage_rate"] = whole["red_flag_triage_rate"]
    if policy is not None:
        result["loop"] = loop_record(run_dir, result["dimension_names"])
        result["final_weights"] = final_weights(run_dir, result["dimension_names"])
    out_file.write_text(json.dumps(result, indent=1))
    return result


def run_arm(work: Path, arm: str, seed: int, common: list[str], eval_cfg) -> dict[str, Any]:
    run_dir = work / run_name(arm, seed)
    cached = run_dir / "heldout.json"
    if cached.exists():
        result = json.loads(cached.read_text())
        if "loop" in result and "never_diagnosed" in result:
            return result
    run_dir = train_arm(work, arm, seed, common)
    return evaluate(eval_cfg, str(run_dir / "policy"), run_dir, diagnosed(eval_cfg))


def diagnosed(cfg) -> int:
    return int(cfg.callbacks.closed_loop.num_prompts)


# ---------------------------------------------------------------------------------------------- report
def counts(values: list[int]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{mean:g}" if len(values) == 1 else f"{mean:g} ({min(values)}..{max(values)})"


def arm_label(arm: str, done: int, seeds: int) -> str:
    if done == 0:
        return f"{arm} (not run yet)"
    return arm if done == seeds else f"{arm} ({done} of {seeds} seeds)"


def metric_tables(base: dict | None, arms: dict[str, list[dict]], header: list[str], full: bool) -> list[str]:
    """Pass-rate table (dimensions, categories, red-flag triage, ...) and mean table of one question set."""
    ref = base or next((rs[0] for rs in arms.values() if rs), None)
    names = [n for n in ref["dimensions"]]
    cols = ([[base]] if base else []) + list(arms.values())
    rows = []
    for n in names:
        if math.isnan(_f(ref["dimensions"][n]["pass_rate"])):
            continue
        rows.append([n, *[pct([_f(r["dimensions"][n]["pass_rate"]) for r in rs]) for rs in cols]])
    cats = sorted({c for rs in cols for r in rs for c in r["categories"]})
    for cat in cats:
        rows.append([f"**{cat}** (category)",
                     *[pct([_f(r["categories"].get(cat, {}).get("pass_rate")) for r in rs]) for rs in cols]])  # fmt: skip
    rows.append([f"**red-flag triage** ({ref['red_flag_prompts']} questions)",
                 *[pct([_f(r["red_flag_triage_rate"]) for r in rs]) for rs in cols]])  # fmt: skip
    if full:
        rows.append(["cut at the length cap", *[pct([_f(r["truncated_rate"]) for r in rs]) for rs in cols]])
        if base:
            rows.append(["worst dimension change vs base (pp)", "",
                         *[", ".join(f"{worst_change(r, base)[0]} {100 * worst_change(r, base)[1]:+.0f}" for r in rs)
                           for rs in arms.values()]])  # fmt: skip
    means = [[n, *[spread([_f(r["dimensions"][n]["mean"]) for r in rs]) for rs in cols]] for n in names]
    no_rate = [n for n in names if math.isnan(_f(ref["dimensions"][n]["pass_rate"]))]
    return [
        "Pass rate (share of answers meeting the dimension's target):",
        "",
        md_table(header, rows),
        "",
        "Mean score per dimension"
        + (
            f" ({', '.join(no_rate)}: no absolute target or not applicable here, so mean only)"
            if no_rate
            else ""
        )
        + ":",
        "",
        md_table(header, means),
        "",
    ]


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


def render(results: dict, meta: dict) -> str:
    seeds, arm_names = meta["seeds"], meta["arms"]
    base = results.get("base")
    arms = {a: [results[run_name(a, s)] for s in seeds if run_name(a, s) in results] for a in arm_names}
    header = ["", *(["base"] if base else []), *[arm_label(a, len(rs), len(seeds)) for a, rs in arms.items()]]
    missing = [run_name(a, s) for a in arm_names for s in seeds if run_name(a, s) not in results]
    ref = base or next((rs[0] for rs in arms.values() if rs), None)
    lines = [
        f"# Closed loop on a real model: {meta['model']}, held-out greedy answers",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['machine']}. Base: {meta['model']}, {meta['steps']} GRPO steps of {meta['prompts_per_step']} "
        f"prompts x {meta['num_generations']} completions (max {meta['max_new_tokens']} new tokens), lr "
        f"{meta['lr']}, beta {meta['beta']}, `optimization={meta['aggregator']}`, trained on "
        f"`matrix={meta['matrix']}`. The closed loop evaluates every {meta['every_n_steps']} step(s) (and at the "
        f"start and the end) on the first {meta['num_prompts']} held-out questions, greedy, and re-answers "
        f"{meta['probe_prompts']} training prompts per evaluation for item-level actions. Arms: "
        + "; ".join(f"`{a}`: {ARM_TEXT.get(a, a)}" for a in arm_names)
        + f". Each cell is the mean over seeds {seeds} with (min..max); the base is deterministic (greedy).",
        "",
    ]
    lines += [
        "Note: with the loop on, training prompts come from the area-weighted curriculum sampler (seeded by "
        "`seed` and the rank), which draws every clinical area equally often even in `none`, where "
        "efficacy_real shuffles uniformly: compare arms with each other, not with efficacy_real.",
        "",
    ]
    if missing:
        lines += [f"**Partial result**: not done yet: {', '.join(missing)}.", ""]
    if ref is None:
        return "\n".join(lines + ["No arm finished yet."]) + "\n"
    nd = ref["never_diagnosed"]
    lines += [
        f"## All {ref['num_prompts']} held-out questions",
        "",
        f"Never trained on ({ref['red_flag_prompts']} with red flags), scored by every dimension of the "
        f"`{meta['eval_matrix']}` matrix. Questions 0..{meta['num_prompts'] - 1} are the ones the loop diagnoses, so its actions "
        "were chosen on them.",
        "",
        *metric_tables(base, arms, header, full=True),
        f"## The {nd['num_prompts']} held-out questions the loop never diagnosed",
        "",
        f"Questions {meta['num_prompts']}..{ref['num_prompts'] - 1} of the split ({nd['red_flag_prompts']} with "
        "red flags): no arm trained on them and the loop never saw them.",
        "",
        *metric_tables(base and base["never_diagnosed"],
                       {a: [r["never_diagnosed"] for r in rs] for a, rs in arms.items()}, header, full=False),  # fmt: skip
    ]  # fmt: skip
    done = {a: rs for a, rs in arms.items() if rs}
    if done:
        kinds = sorted({k for rs in done.values() for r in rs for k in r["loop"]["actions"]})
        loop_header = ["", *[arm_label(a, len(rs), len(seeds)) for a, rs in arms.items()]]
        rows = [[f"`{k}`", *[counts([r["loop"]["actions"].get(k, 0) for r in rs]) for rs in arms.values()]]
                for k in kinds]  # fmt: skip
        rows.append(["**all**", *[counts([r["loop"]["actions_total"] for r in rs]) for rs in arms.values()]])
        evals = sorted({tuple(r["loop"]["evaluations"]) for rs in done.values() for r in rs})
        lines += [
            "## What the loop did",
            "",
            "Actions by kind, summed over the run's evaluations (steps "
            + " / ".join(", ".join(str(s) for s in e) for e in evals)
            + "), per run: mean over seeds (min..max):",
            "",
            md_table(loop_header, rows),
            "",
            "Final loop gain per dimension (1 = not pushed):",
            "",
            md_table(
                loop_header,
                [
                    [n, *[spread([r["loop"]["final_gains"][n] for r in rs]) for rs in arms.values()]]
                    for n in ref["dimension_names"]
                ],
            ),
            "",
        ]
        tadw = {a: [r["final_weights"] for r in rs if r.get("final_weights")] for a, rs in arms.items()}
        if any(tadw.values()):
            lines += [
                "Final TADW weights (mean over seeds):",
                "",
                md_table(
                    loop_header,
                    [
                        [n, *[spread([w[n] for w in ws]) for ws in tadw.values()]]
                        for n in ref["dimension_names"]
                    ],
                ),
                "",
            ]
    lines += [f"Wall clock: {meta['wall_s'] / 60:.0f} min for the arms run in this invocation "
              f"(cached arms are not re-run). Raw results: `{meta['out_name']}.json`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write(args, out: Path, results: dict, cfg, wall_s: float) -> None:
    loop = cfg.callbacks.closed_loop
    meta = {
        "command": "python benchmarks/closed_loop.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct (LoRA r=16)"
        if cfg.model.kind == "smollm2"
        else f"model={cfg.model.kind}",
        "arms": args.arms,
        "arm_overrides": {a: ARMS[a] for a in args.arms},
        "seeds": args.seeds,
        "steps": int(cfg.trainer.max_steps),
        "matrix": cfg.matrix.name,
        "eval_matrix": cfg.matrix.name,
        "aggregator": cfg.optimization.aggregator,
        "prompts_per_step": cfg.data.prompts_per_step,
        "num_generations": cfg.algorithm.num_generations,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "lr": cfg.algorithm.lr,
        "beta": cfg.algorithm.beta,
        "every_n_steps": loop.every_n_steps,
        "num_prompts": loop.num_prompts,
        "probe_prompts": loop.get("probe_prompts"),
        "overrides": args.overrides,
        "smoke": args.smoke,
        "wall_s": wall_s,
        "out_name": out.name,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in results.items()}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": slim}, indent=1))
    out.with_suffix(".md").write_text(render(results, meta))


# ---------------------------------------------------------------------------------------------- main
def cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def worker_command(args, arm: str, seed: int, core: int | None) -> list[str]:
    """This script for one arm (train + held-out), pinned to `core` with taskset when there is one."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--work",
        str(args.work),
        "--one",
        arm,
        str(seed),
    ]
    if args.steps is not None:
        command += ["--steps", str(args.steps)]
    if args.smoke:
        command.append("--smoke")
    command += args.overrides
    taskset = shutil.which("taskset")
    return ([taskset, "-c", str(core)] if taskset and core is not None else []) + command


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 (--smoke: 0)")
    parser.add_argument(
        "--steps", type=int, default=None, help="trainer.max_steps (default: the experiment's 16)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="arms run in parallel, each pinned to one core")
    parser.add_argument(
        "--work", default=None, help="run dirs and caches (default outputs/bench_closed_loop)"
    )
    parser.add_argument("--out", default=None, help="writes OUT.json and OUT.md")
    parser.add_argument(
        "--smoke", action="store_true",
        help="model=tiny, matrix=rules_only, 2 steps, seed 0, a temporary work dir; never writes benchmarks/results",
    )  # fmt: skip
    parser.add_argument("--one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)  # a --jobs worker
    parser.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for every arm, e.g. rollout.max_new_tokens=160"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.smoke:
        args.steps = 2 if args.steps is None else args.steps
        args.seeds = args.seeds or [0]
        args.work = args.work or tempfile.mkdtemp(prefix="bench_closed_loop_smoke_")
    args.seeds = args.seeds or [0, 1]
    work = Path(args.work or REPO / "outputs" / "bench_closed_loop").resolve()
    args.work = str(work)
    out = Path(args.out) if args.out else (work / "closed_loop" if args.smoke else RESULTS / "closed_loop")
    matrix = SMOKE_MATRIX if args.smoke else EVAL_MATRIX
    common = [f"+experiment={EXPERIMENT}", f"matrix={matrix}", *(SMOKE_OVERRIDES if args.smoke else [])]
    if args.steps is not None:
        common.append(f"trainer.max_steps={args.steps}")
    common += args.overrides
    eval_cfg = compose([*common, f"run_dir={work / 'base'}"])

    if args.one:  # a --jobs worker: one arm, its result cached in its heldout.json
        run_arm(work, args.one[0], int(args.one[1]), common, eval_cfg)
        return

    t0 = time.perf_counter()
    print(f"[closed_loop] work {work}, report {out}.md", flush=True)
    results: dict[str, Any] = {"base": evaluate(eval_cfg, None, work / "base", diagnosed(eval_cfg))}
    write(args, out, results, eval_cfg, time.perf_counter() - t0)
    todo = [
        (a, s) for s in args.seeds for a in args.arms
    ]  # seed-major: a partial run has every arm of seed 0

    def finished(arm: str, seed: int, result: dict) -> None:
        results[run_name(arm, seed)] = result
        loop = result["loop"]
        print(f"[{run_name(arm, seed)}] red-flag triage {result['red_flag_triage_rate']:.2f} (never diagnosed "
              f"{result['never_diagnosed']['red_flag_triage_rate']:.2f}), loop actions {loop['actions']}", flush=True)  # fmt: skip
        # the report keeps the order of --seeds / --arms, whatever order the arms finish in
        ordered = {"base": results["base"]}
        ordered |= {run_name(a, s): results[run_name(a, s)] for a, s in todo if run_name(a, s) in results}
        write(args, out, ordered, eval_cfg, time.perf_counter() - t0)

    if args.jobs <= 1:
        for arm, seed in todo:
            finished(arm, seed, run_arm(work, arm, seed, common, eval_cfg))
    else:
        slots = cores()
        free = list(range(args.jobs))
        failures = []

        def one(arm: str, seed: int, slot: int) -> dict:
            cached = work / run_name(arm, seed) / "heldout.json"
            if not (cached.exists() and "loop" in json.loads(cached.read_text())):
                (work / run_name(arm, seed)).mkdir(parents=True, exist_ok=True)
                command = worker_command(args, arm, seed, slots[slot % len(slots)])
                print(f"[job {slot}] {run_name(arm, seed)}: {' '.join(command)}", flush=True)
                with open(work / run_name(arm, seed) / "worker.log", "a") as log:
                    done = subprocess.run(
                        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=child_env()
                    )
                if done.returncode != 0:
                    raise RuntimeError(f"{run_name(arm, seed)} failed (exit {done.returncode}); see "
                                       f"{work / run_name(arm, seed) / 'worker.log'} and train.log")  # fmt: skip
            return json.loads(cached.read_text())

        with ThreadPoolExecutor(args.jobs) as pool:
            running: dict = {}
            queue = list(todo)
            while queue or running:
                while queue and free:
                    arm, seed = queue.pop(0)
                    slot = free.pop(0)
                    running[pool.submit(one, arm, seed, slot)] = (arm, seed, slot)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    arm, seed, slot = running.pop(future)
                    free.append(slot)
                    try:
                        finished(arm, seed, future.result())
                    except Exception as error:  # the other arms go on; the report marks this one missing
                        failures.append(str(error))
                        print(f"[{run_name(arm, seed)}] {error}", flush=True)
        if failures:
            raise SystemExit("failed arms:\n" + "\n".join(failures))
    print(out.with_suffix(".md").read_text(), flush=True)


if __name__ == "__main__":
    main()
