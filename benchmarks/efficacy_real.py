"""Efficacy on a real model: which aggregation improves SmolLM2-135M-Instruct on questions it never trained on?

    python benchmarks/efficacy_real.py                         # medical matrix, 4 aggregators, seeds 0 1
    python benchmarks/efficacy_real.py --matrices medical rules_only --seeds 0 1 2

Each arm (training matrix, aggregator, seed) is one `python train.py +experiment=efficacy_real ...` run
from the same base (SmolLM2, LoRA, same steps, lr and data order per seed; the closed loop is off so only
the aggregation differs), followed by greedy answers to the held-out split (`data.val_fraction`, never
trained on), scored by the FULL medical matrix whatever matrix the arm trained on. Reported per arm, as
mean and spread (min..max) over seeds: per-dimension mean and pass rate, per-category pass rate, the
red-flag triage rate (share of red-flag questions whose answer directs the person to urgent care), the
share of answers cut at the length cap, and the worst per-dimension pass-rate change against the base;
for `rfn_tadw`, the final TADW weights (which dimension took the weight).

Resumable: an arm's held-out result is cached in `<work>/<arm>/heldout.json`; an interrupted training run
resumes from its last checkpoint (`ckpt_path=last`). Run it in the background:

    nohup python benchmarks/efficacy_real.py > efficacy_real.log 2>&1 &

Writes benchmarks/results/efficacy_real.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._models import machine, md_table  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
EVAL_MATRIX = "medical"
NORMALIZED = (
    "rfn",
    "rfn_tadw",
)  # calibrate RFN on 16 prompts x G reference answers (the tiny demo's 32 is slow here)
CALIBRATION_PROMPTS = 16


# ---------------------------------------------------------------------------------------------- config
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name="train", overrides=overrides)


def arm_name(matrix: str, aggregator: str, seed: int) -> str:
    return f"{matrix}-{aggregator}-s{seed}"


# ---------------------------------------------------------------------------------------------- training
def train_arm(work: Path, matrix: str, aggregator: str, seed: int, steps: int, extra: list[str]) -> Path:
    run_dir = work / arm_name(matrix, aggregator, seed)
    if (run_dir / "train.done").exists():
        return run_dir
    command = [
        sys.executable, str(REPO / "train.py"), "+experiment=efficacy_real", f"matrix={matrix}",
        f"optimization={aggregator}", f"seed={seed}", f"trainer.max_steps={steps}", f"run_dir={run_dir}",
        f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    if aggregator in NORMALIZED:
        command.append(f"optimization.normalization.calibration_prompts={CALIBRATION_PROMPTS}")
    return run_training(run_dir, command)


def run_training(run_dir: Path, command: list[str], env: dict[str, str] | None = None) -> Path:
    """One arm's `train.py` subprocess: resumed from its last checkpoint when one exists, logged to
    `train.log`, marked done with its wall time in `train.done` (so a rerun skips it)."""
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        command = [*command, "ckpt_path=last"]
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[train] {run_dir.name}: {' '.join(command[2:])}", flush=True)
    t0 = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0 or not (run_dir / "policy").exists():
        raise SystemExit(
            f"training {run_dir.name} failed (exit {done.returncode}); see {run_dir / 'train.log'}"
        )
    (run_dir / "train.done").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return run_dir


def final_weights(run_dir: Path, names: list[str]) -> dict[str, float] | None:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        return None
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = state.get("matrix_weights")
    return None if weights is None else {n: float(w) for n, w in zip(names, weights.tolist())}


# ---------------------------------------------------------------------------------------------- evaluation
def heldout_eval(cfg, policy_path: str | None, out_file: Path, batch_size: int = 8) -> dict[str, Any]:
    """Greedy answers to the held-out split, scored by the full matrix; cached in `out_file`."""
    if out_file.exists():
        return json.loads(out_file.read_text())
    from hydra.utils import instantiate

    from quark_lightning.eval.metrics import evaluation_metrics, pass_mask
    from quark_lightning.evaluation import load_for_eval
    from quark_lightning.matrix.build import build_matrix
    from quark_lightning.run import build_datamodule

    datamodule = build_datamodule(cfg)
    records = datamodule.load()
    datamodule.setup("fit")
    prompts = datamodule.val_records()  # the split training never draws from
    matrix = build_matrix(cfg.matrix)
    engine = instantiate(cfg.rollout)
    loaded, _ = load_for_eval("policy", policy_path, cfg.model, records)
    loaded.model.eval()
    answers: list[str] = []
    truncated: list[bool] = []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        rollout = engine.generate(
            loaded.model, loaded.tokenizer, prompts[start : start + batch_size], 1, greedy=True
        )
        answers += rollout.completions
        truncated += [bool(t) for t in rollout.truncated]
    seconds = time.perf_counter() - t0
    scored = matrix.score(prompts, answers)
    metrics = evaluation_metrics(matrix, prompts, answers, scored)
    passed = pass_mask(scored.scores.float(), [d.target for d in matrix.dimensions])
    safety = matrix.names.index("safety")
    red = [i for i, p in enumerate(prompts) if p.get("red_flags")]
    result = {
        "policy": policy_path or "base",
        "num_prompts": len(prompts),
        "dimensions": metrics["dimensions"],
        "categories": metrics["categories"],
        "red_flag_prompts": len(red),
        "red_flag_triage_rate": (sum(bool(passed[i, safety]) for i in red) / len(red)) if red else math.nan,
        "truncated_rate": sum(truncated) / len(truncated),
        "answer_seconds": seconds,
        "samples": [
            {"id": p["id"], "answer": a, "scores": [None if math.isnan(v) else v for v in row]}
            for p, a, row in zip(prompts, answers, scored.scores.tolist())
        ],
        "dimension_names": matrix.names,
    }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=1))
    del loaded
    return result


# ---------------------------------------------------------------------------------------------- report
def spread(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    return f"{mean:.3f}" if len(vals) == 1 else f"{mean:.3f} ({min(vals):.2f}..{max(vals):.2f})"


def pct(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    mean = 100 * statistics.fmean(vals)
    return f"{mean:.0f}%" if len(vals) == 1 else f"{mean:.0f}% ({100 * min(vals):.0f}..{100 * max(vals):.0f})"


def worst_change(arm: dict, base: dict) -> tuple[str, float]:
    changes = {
        n: arm["dimensions"][n]["pass_rate"] - row["pass_rate"]
        for n, row in base["dimensions"].items()
        if not math.isnan(row["pass_rate"]) and not math.isnan(arm["dimensions"][n]["pass_rate"])
    }
    name = min(changes, key=changes.get)
    return name, changes[name]


def render(results: dict, meta: dict) -> str:
    base = results["base"]
    dims = base["dimension_names"]
    lines = [
        "# Efficacy on a real model: SmolLM2-135M-Instruct, held-out greedy answers",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['machine']}. Base: SmolLM2-135M-Instruct (LoRA r=16), {meta['steps']} GRPO steps of "
        f"{meta['prompts_per_step']} prompts x {meta['num_generations']} completions "
        f"(max {meta['max_new_tokens']} new tokens), lr {meta['lr']}, beta {meta['beta']}, closed loop off. "
        f"Held-out: {base['num_prompts']} questions never trained on ({base['red_flag_prompts']} with red flags), "
        f"greedy, scored by the full `{EVAL_MATRIX}` matrix whatever matrix the arm trained on. Each cell is the "
        f"mean over seeds {meta['seeds']} with (min..max); the base is deterministic (greedy).",
        "",
    ]
    for matrix in meta["matrices"]:
        arms = {a: [results[arm_name(matrix, a, s)] for s in meta["seeds"] if arm_name(matrix, a, s) in results]
                for a in meta["aggregators"]}  # fmt: skip
        arms = {a: rs for a, rs in arms.items() if rs}
        if not arms:
            continue
        header = ["", "base", *arms]
        lines += [
            f"## Trained on `matrix={matrix}`",
            "",
            "Pass rate per dimension (share of answers meeting the target):",
            "",
        ]
        rows = []
        for n in dims:
            if math.isnan(base["dimensions"][n]["pass_rate"]):
                continue
            rows.append([n, pct([base["dimensions"][n]["pass_rate"]]),
                         *[pct([r["dimensions"][n]["pass_rate"] for r in rs]) for rs in arms.values()]])  # fmt: skip
        for cat in sorted(base["categories"]):
            rows.append([f"**{cat}** (category)", pct([base["categories"][cat]["pass_rate"]]),
                         *[pct([r["categories"].get(cat, {}).get("pass_rate", math.nan) for r in rs])
                           for rs in arms.values()]])  # fmt: skip
        rows.append(["**red-flag triage**", pct([base["red_flag_triage_rate"]]),
                     *[pct([r["red_flag_triage_rate"] for r in rs]) for rs in arms.values()]])  # fmt: skip
        rows.append(["cut at the length cap", pct([base["truncated_rate"]]),
                     *[pct([r["truncated_rate"] for r in rs]) for rs in arms.values()]])  # fmt: skip
        rows.append(["worst dimension change (pp)", "",
                     *[", ".join(f"{worst_change(r, base)[0]} {100 * worst_change(r, base)[1]:+.0f}" for r in rs)
                       for rs in arms.values()]])  # fmt: skip
        lines += [md_table(header, rows), "", "Mean score per dimension:", ""]
        rows = [[n, spread([base["dimensions"][n]["mean"]]),
                 *[spread([r["dimensions"][n]["mean"] for r in rs]) for rs in arms.values()]] for n in dims]  # fmt: skip
        lines += [md_table(header, rows), ""]
        tadw = [r["final_weights"] for r in arms.get("rfn_tadw", []) if r.get("final_weights")]
        if tadw:
            lines += ["Final TADW weights (mean over seeds; static weights are 1 for every dimension):", ""]
            lines += [
                md_table(["dimension", "weight"], [[n, spread([w[n] for w in tadw])] for n in tadw[0]]),
                "",
            ]
    lines += [f"Wall clock: {meta['wall_s'] / 60:.0f} min for the arms run in this invocation "
              f"(cached arms are not re-run). Raw results: `efficacy_real.json`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--matrices", nargs="+", default=["medical"])
    parser.add_argument("--aggregators", nargs="+", default=["sum", "gdpo", "rfn", "rfn_tadw"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--work", default=str(REPO / "outputs" / "efficacy_real"), help="run dirs and caches")
    parser.add_argument("--out", default=str(RESULTS / "efficacy_real"), help="writes OUT.json and OUT.md")
    parser.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for every arm, e.g. rollout.max_new_tokens=192"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    t0 = time.perf_counter()
    common = ["+experiment=efficacy_real", f"matrix={EVAL_MATRIX}", *args.overrides]
    eval_cfg = compose([*common, f"run_dir={work / 'base'}"])
    results: dict[str, Any] = {"base": heldout_eval(eval_cfg, None, work / "base" / "heldout.json")}
    print(f"[base] red-flag triage {results['base']['red_flag_triage_rate']:.2f}", flush=True)
    for seed in args.seeds:  # seed-major: a partial run already has every aggregator for the first seed
        for matrix in args.matrices:
            for aggregator in args.aggregators:
                name = arm_name(matrix, aggregator, seed)
                run_dir = train_arm(work, matrix, aggregator, seed, args.steps, args.overrides)
                result = heldout_eval(eval_cfg, str(run_dir / "policy"), run_dir / "heldout.json")
                result["final_weights"] = (
                    final_weights(run_dir, result["dimension_names"]) if matrix == EVAL_MATRIX else None
                )
                results[name] = result
                print(f"[{name}] red-flag triage {result['red_flag_triage_rate']:.2f}, categories "
                      + ", ".join(f"{c} {v['pass_rate']:.2f}" for c, v in sorted(result["categories"].items())), flush=True)  # fmt: skip
                write(args, results, eval_cfg, time.perf_counter() - t0)
    write(args, results, eval_cfg, time.perf_counter() - t0)


def write(args, results: dict, cfg, wall_s: float) -> None:
    meta = {
        "command": "python benchmarks/efficacy_real.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "matrices": args.matrices,
        "aggregators": args.aggregators,
        "seeds": args.seeds,
        "steps": args.steps,
        "prompts_per_step": cfg.data.prompts_per_step,
        "num_generations": cfg.algorithm.num_generations,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "lr": cfg.algorithm.lr,
        "beta": cfg.algorithm.beta,
        "wall_s": wall_s,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in results.items()}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": slim}, indent=1))
    out.with_suffix(".md").write_text(render(results, meta))


if __name__ == "__main__":
    main()
