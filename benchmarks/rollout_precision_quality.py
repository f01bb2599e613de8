"""Quality guard of the low-precision rollout copy: the same short SmolLM2 training with fp32 and bf16 rollout.

    python benchmarks/rollout_precision_quality.py [--seeds 0 1] [--precisions fp32 bf16] [--jobs 2]

Each arm is `python train.py +experiment=real_demo seed=S rollout.precision=P
algorithm.vllm_importance_sampling_correction=true` (12 LoRA GRPO steps of 2 prompts x 4 answers at 72 new
tokens, the full medical matrix, rfn_tadw, the closed loop; one torch thread per run, `--jobs` runs at a
time). The correction is on in both arms: with the fp32 engine it is a no-op (ratio 1 up to rounding).
Reported per arm: the held-out table's end (16 held-out questions, greedy, answered by the policy itself in
both arms) for every dimension, the mean over steps of the logged sampler-trainer mismatch (`sampling/kl`,
`sampling/capped_share`), the mean generation time per step and the run's wall time. The comparison is
the low-precision arm - fp32 per seed (paired: same seed, same prompts), beside the fp32 seeds' own spread.
Writes benchmarks/results/rollout_precision_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._models import machine, md_table  # noqa: E402

SCALARS = ("sampling/kl", "sampling/capped_share", "time/generation", "completions/clipped_ratio")


def run_arm(work: Path, seed: int, precision: str) -> dict:
    run_dir = work / f"{precision}-s{seed}"
    result = run_dir / "arm.json"
    if result.exists():
        return json.loads(result.read_text())
    cmd = [
        sys.executable, "train.py", "+experiment=real_demo", f"seed={seed}", f"rollout.precision={precision}",
        "algorithm.vllm_importance_sampling_correction=true", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{run_dir.name} failed (exit {done.returncode}); see {run_dir / 'train.log'}")
    reports = sorted((run_dir / "eval").glob("step_*/metrics.json"))
    history = json.loads(reports[-1].read_text())["history"]
    arm = {
        "seed": seed,
        "precision": precision,
        "wall_s": time.perf_counter() - start,
        "start": {n: r["mean"] for n, r in history[0]["dimensions"].items()},
        "end": {n: r["mean"] for n, r in history[-1]["dimensions"].items()},
        "end_pass": {n: r["pass_rate"] for n, r in history[-1]["dimensions"].items()},
        "answers": {"start": history[0].get("answers", {}), "end": history[-1].get("answers", {})},
        "steps": step_means(run_dir),
    }
    result.write_text(json.dumps(arm, indent=1))
    return arm


def step_means(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for path in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in SCALARS:
            if tag in acc.Tags()["scalars"]:
                values = [e.value for e in acc.Scalars(tag)]
                out[tag] = statistics.mean(values)
                if tag == "sampling/kl":
                    out["sampling/kl_abs_max"] = max(abs(v) for v in values)
    return out


def num(x) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"


def render(arms: list[dict], args) -> str:
    by = {(a["precision"], a["seed"]): a for a in arms}
    dims = list(arms[0]["end"])
    rows = []
    for d in dims:
        row = [d]
        for p in args.precisions:
            row.append(", ".join(num(by[(p, s)]["end"][d]) for s in args.seeds))
        low = args.precisions[-1]
        diffs = [by[(low, s)]["end"][d] - by[("fp32", s)]["end"][d] for s in args.seeds
                 if (low, s) in by and ("fp32", s) in by and by[("fp32", s)]["end"][d] is not None
                 and by[(low, s)]["end"][d] is not None]  # fmt: skip
        fp = [by[("fp32", s)]["end"][d] for s in args.seeds if by[("fp32", s)]["end"][d] is not None]
        row.append(", ".join(f"{x:+.3f}" for x in diffs) if diffs else "–")
        row.append(f"{max(fp) - min(fp):.3f}" if len(fp) > 1 else "–")
        rows.append(row)
    table = md_table(["dimension (held-out mean, end)", *[f"{p} (seeds {args.seeds})" for p in args.precisions],
                      f"{args.precisions[-1]} - fp32 (per seed)", "fp32 seed spread"], rows)  # fmt: skip
    step_rows = [[f"{a['precision']} s{a['seed']}", f"{a['steps'].get('sampling/kl', float('nan')):.2e}",
                  f"{a['steps'].get('sampling/kl_abs_max', float('nan')):.2e}",
                  f"{a['steps'].get('sampling/capped_share', float('nan')):.4f}",
                  f"{a['steps'].get('time/generation', float('nan')):.1f}",
                  f"{a['steps'].get('completions/clipped_ratio', float('nan')):.2f}", f"{a['wall_s']:.0f}"]
                 for a in arms]  # fmt: skip
    steps = md_table(["arm", "sampling/kl (mean)", "|sampling/kl| max", "capped share", "generation s / step",
                      "cut at cap", "wall s"], step_rows)  # fmt: skip
    answer_rows = [[f"{a['precision']} s{a['seed']}",
                    *(num(a.get("answers", {}).get(when, {}).get(key)) for when in ("start", "end")
                      for key in ("mean_tokens", "cut_share"))] for a in arms]  # fmt: skip
    answers = md_table(["arm", "tokens, start", "cut share, start", "tokens, end", "cut share, end"], answer_rows)
    return (
        f"# Rollout precision: fp32 vs a {args.precisions[-1]} rollout copy, same short SmolLM2 training\n\n"
        f"Command: `python benchmarks/rollout_precision_quality.py {' '.join(sys.argv[1:])}`\n\n"
        f"{machine()}; {args.jobs} runs at a time, one torch thread each.\n\n"
        "`+experiment=real_demo` (12 LoRA GRPO steps, 2 prompts x 4 answers, 72 new tokens, rfn_tadw, closed loop) "
        "with `algorithm.vllm_importance_sampling_correction=true` in both arms. Held-out means at the end: 16 "
        "held-out questions, greedy, answered by the policy itself (not the copy).\n\n"
        f"{table}\n\nHeld-out answers (greedy, the policy itself; length beside the scores):\n\n{answers}\n\n"
        f"Step logs (mean over the 12 steps):\n\n{steps}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", default=str(REPO / "outputs" / "rollout_precision_quality"))
    args = parser.parse_args()
    work = Path(args.work)
    plan = [(s, p) for s in args.seeds for p in args.precisions]
    with ThreadPoolExecutor(args.jobs) as pool:
        arms = list(pool.map(lambda sp: run_arm(work, *sp), plan))
    out = REPO / "benchmarks" / "results" / "rollout_precision_quality"
    out.with_suffix(".json").write_text(json.dumps({"machine": machine(), "arms": arms}, indent=1))
    out.with_suffix(".md").write_text(render(arms, args))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
