"""Why the real demo's answers grew into the completion cap, and what stops it, on the demo's own held-out table.

    python benchmarks/real_demo_length.py                 # runs every (arm, seed) not cached yet, then the report
    python benchmarks/real_demo_length.py --report        # the report from the cache only
    python benchmarks/real_demo_length.py --ingest ARM SEED RUN_DIR   # cache a run made by hand with ARM's overrides

Each arm is `python train.py` with its overrides (below), 12 LoRA GRPO steps of 2 prompts x 4 answers on
SmolLM2-135M-Instruct; its closed loop answers the same 16 held-out questions greedily at step 0 and 12.
What is compared is that table's start-to-end change: the answers' mean length (tokens) and share cut at
the 72-token cap beside the format and content dimensions. `before` is the real demo as it was (no
`complete` dimension, lr 3e-4); `adopted` is `+experiment=real_demo` now (the `complete` gate, lr 1e-4);
`placebo` trains on a score unrelated to the answer (+experiment=placebo_control), so its change is what the
update does on its own. The other arms were single-seed probes on the way. 16 greedy questions move in
steps of 6.25 pp, and a handful of seeds is few: read the per-seed values, not only the means.

Every (arm, seed) is cached in benchmarks/results/real_demo_length/<arm>-s<seed>.json once its last
evaluation is written, with what it trained with (a fingerprint of its .hydra/config.yaml: lr, loss, KL,
aggregator, each dimension's weight, gate and scorer); a run whose fingerprint differs from its arm's is
refused, or, with --allow-diff, cached with the differences listed in the report. Writes
benchmarks/results/real_demo_length.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._models import machine, md_table  # noqa: E402
from quark_lightning.stages.runner import changed_keys  # noqa: E402

CACHE = ROOT / "benchmarks" / "results" / "real_demo_length"
OUT = ROOT / "benchmarks" / "results" / "real_demo_length.md"
BEFORE = ["+experiment=real_demo", "matrix.dimensions.complete=null", "algorithm.lr=3.0e-4"]
LR3 = ["+experiment=real_demo", "algorithm.lr=3.0e-4"]
ARMS: dict[str, tuple[list[str], str]] = {
    "before": (BEFORE, "the real demo before this change"),
    "adopted": (["+experiment=real_demo"], "the real demo now: the `complete` gate, lr 1e-4"),
    "placebo": (["+experiment=placebo_control"], "trained on a placebo score, lr 1e-4"),
    "placebo_lr3e-4": (["+experiment=placebo_control", "algorithm.lr=3.0e-4"], "placebo at the old lr"),
    "before+dr_grpo": (BEFORE + ["algorithm.loss_type=dr_grpo"], "no per-sequence length normalization"),
    "before+lr1e-4": (BEFORE[:2] + ["algorithm.lr=1.0e-4"], "a smaller step, no gate"),
    "before+decoupled_all": (
        BEFORE + ["optimization.normalization.length_decoupled=all"],
        "every dimension normalized on its length residual",
    ),
    "text_gate_lr3e-4": (
        LR3
        + [
            "matrix.dimensions.complete.scorer._target_=quark_lightning.scorers.format.FormatScorer",
            "+matrix.dimensions.complete.scorer.rules=[clean_ending]",
            "matrix.dimensions.complete.on_failure={nan_is_failure: true}",
        ],
        "gate on the text's clean ending instead of the rollout's flag",
    ),
    "gate_lr3e-4": (LR3, "the `complete` gate at the old lr"),
    "gate_lr3e-4_beta0.05": (LR3 + ["algorithm.beta=0.05"], "the gate, old lr, 5x the KL coefficient"),
    "additive_lr3e-4": (LR3 + ["matrix.dimensions.complete.gate=null"], "`complete` as a plain dimension"),
    "additive_w4_lr3e-4": (
        LR3 + ["matrix.dimensions.complete.gate=null", "matrix.dimensions.complete.weight=4.0"],
        "`complete` as a plain dimension, prior weight 4",
    ),
    "control": (
        ["+experiment=real_demo", "optimization.length_control=all", "matrix.dimensions.complete=null"],
        "every dimension length-controlled within the step's groups (shaping/length_control.py), no gate",
    ),
    "control+gate": (
        ["+experiment=real_demo", "optimization.length_control=all"],
        "length control and the `complete` gate",
    ),
}
MAIN = ("before", "adopted", "placebo")
DIMS = ("format_rules", "complete", "usefulness", "expert_rubric", "correctness_macro", "online_rm")


def fingerprint(cfg) -> dict:
    """What decides a run's training: the keys its arms differ in, and every dimension's weight, gate, scorer."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(cfg, resolve=False) if not isinstance(cfg, dict) else cfg
    algorithm, optimization = cfg["algorithm"], cfg["optimization"]
    dims = {
        name: [
            d.get("weight"),
            d.get("gate"),
            (d.get("scorer") or {}).get("_target_"),
            (d.get("scorer") or {}).get("rules"),
        ]
        for name, d in cfg["matrix"]["dimensions"].items()
        if d is not None
    }
    return {
        "lr": algorithm["lr"], "loss_type": algorithm["loss_type"], "beta": algorithm["beta"],
        "aggregator": optimization["aggregator"], "length_control": optimization.get("length_control"),
        "length_decoupled": (optimization.get("normalization") or {}).get("length_decoupled"),
        "max_new_tokens": cfg["rollout"]["max_new_tokens"], "system_prompt": cfg["data"].get("system_prompt"),
        "dimensions": dims,
    }  # fmt: skip


def arm_fingerprint(arm: str) -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return fingerprint(compose("train", overrides=ARMS[arm][0]))


def differences(run: dict, arm: dict) -> list[str]:
    """Each key whose value differs between a run's fingerprint and its arm's, with both values."""

    def at(tree: dict, dotted: str):
        for part in dotted.split("."):
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree

    return [f"{key}: run {at(run, key)!r}, arm {at(arm, key)!r}" for key in changed_keys(run, arm)]


def collect(run_dir: Path) -> dict:
    """A finished run's held-out start and end (eval/step_*/metrics.json) and what it trained with."""
    reports = sorted((run_dir / "eval").glob("step_*/metrics.json"))
    if not reports:
        raise SystemExit(f"{run_dir}: no eval/step_*/metrics.json; did the run finish?")
    history = json.loads(reports[-1].read_text())["history"]
    hydra_dir = run_dir / ".hydra"
    config = yaml.safe_load((hydra_dir / "config.yaml").read_text())
    if (
        history[-1]["step"] != config["trainer"]["max_steps"]
        or not (run_dir / "eval" / "summary.md").exists()
    ):
        raise SystemExit(
            f"{run_dir}: its last evaluation is at step {history[-1]['step']}; is it still running?"
        )

    def view(entry: dict) -> dict:
        dims = {d: entry["dimensions"][d] for d in DIMS if d in entry["dimensions"]}
        return {"step": entry["step"], "answers": entry["answers"], "dimensions": dims}

    return {
        "overrides": yaml.safe_load((hydra_dir / "overrides.yaml").read_text()),
        "seed": config["seed"],
        "fingerprint": fingerprint(config),
        "start": view(history[0]),
        "end": view(history[-1]),
    }


def run(arm: str, seed: int) -> None:
    run_dir = ROOT / "outputs" / "real_demo_length" / f"{arm}-s{seed}"
    cmd = [sys.executable, "train.py", *ARMS[arm][0], f"seed={seed}", f"hydra.run.dir={run_dir}"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    save(arm, seed, run_dir)


def save(arm: str, seed: int, run_dir: Path, allow: bool = False) -> None:
    """Cache a run as (arm, seed) if it trained as the arm does now; `allow` records the differences instead."""
    record = collect(run_dir)
    diff = differences(record["fingerprint"], arm_fingerprint(arm))
    if record["seed"] != seed:
        diff.append(f"seed: run {record['seed']}, arm {seed}")
    if diff and not allow:
        raise SystemExit(
            f"{run_dir} did not train as arm {arm}: " + "; ".join(diff) + " (--allow-diff records them)"
        )
    record["differences_from_arm"] = diff
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{arm}-s{seed}.json").write_text(json.dumps(record, indent=1))


def change(record: dict, key: str) -> float | None:
    """End minus start of a dimension's held-out mean (or of an `answers` figure)."""
    if key in ("mean_tokens", "cut_share"):
        return record["end"]["answers"][key] - record["start"]["answers"][key]
    a, b = record["start"]["dimensions"].get(key), record["end"]["dimensions"].get(key)
    return None if a is None or b is None or a["mean"] is None or b["mean"] is None else b["mean"] - a["mean"]


def cell(values: list[float | None], fmt: str) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "–"
    mean = statistics.fmean(got)
    return f"{mean:{fmt}}" if len(got) == 1 else f"{mean:{fmt}} ({', '.join(f'{v:{fmt}}' for v in got)})"


def seed_interval(
    a: list[float], b: list[float] | None = None, draws: int = 2000
) -> tuple[float, float, float]:
    """Mean of `a` (or of mean(a) - mean(b)) with a 95% percentile bootstrap over seeds, each arm's seeds
    resampled on their own (the arms are not paired: they train differently). Per-question answers are not
    cached, so this is the seed level only."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.asarray(a, dtype=float)

    def mean_of(v: np.ndarray) -> np.ndarray:
        return v[rng.integers(0, len(v), (draws, len(v)))].mean(1)

    boot = mean_of(x) - (mean_of(np.asarray(b, dtype=float)) if b is not None else 0.0)
    point = x.mean() - (float(np.mean(b)) if b is not None else 0.0)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(point), float(lo), float(hi)


INTERVAL_KEYS = (("mean_tokens", 1.0, ".1f"), ("cut_share", 100.0, "+.0f")) + tuple(
    (d, 1.0, "+.3f") for d in DIMS
)


def interval_table(records: dict[str, dict[int, dict]]) -> str:
    """The main arms' changes, and adopted minus placebo, with seed-bootstrap intervals."""
    cols = [("adopted", None), ("placebo", None), ("before", None), ("adopted", "placebo")]
    cols = [(a, b) for a, b in cols if a in records and (b is None or b in records) and len(records[a]) >= 3]
    rows = []
    for key, scale, fmt in INTERVAL_KEYS:
        row = [f"{key} change" + (" (pp)" if key == "cut_share" else "")]
        for a, b in cols:
            va = [scale * v for r in records[a].values() if (v := change(r, key)) is not None]
            vb = (
                None
                if b is None
                else [scale * v for r in records[b].values() if (v := change(r, key)) is not None]
            )
            if len(va) < 3 or (vb is not None and len(vb) < 3):
                row.append("–")
                continue
            point, lo, hi = seed_interval(va, vb)
            row.append(f"{point:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]")
        rows.append(row)
    header = ["held-out change"] + [f"`{a}`" if b is None else f"`{a}` - `{b}`" for a, b in cols]
    return md_table(header, rows)


def headline(by_seed: dict[int, dict]) -> str:
    runs = list(by_seed.values())
    mean = lambda xs: statistics.fmean(xs)  # noqa: E731
    start = mean([r["start"]["answers"]["mean_tokens"] for r in runs])
    end = mean([r["end"]["answers"]["mean_tokens"] for r in runs])
    cut = mean([100 * r["end"]["answers"]["cut_share"] for r in runs])
    fmt = mean([change(r, "format_rules") for r in runs])
    return f"{start:.0f} -> {end:.0f} tokens, {cut:.0f}% cut at the end, format mean {fmt:+.3f} ({len(runs)} seeds)"


def report() -> str:
    records: dict[str, dict[int, dict]] = {}
    for path in sorted(CACHE.glob("*-s*.json")):
        arm, seed = path.stem.rsplit("-s", 1)
        records.setdefault(arm, {})[int(seed)] = json.loads(path.read_text())
    header = ["arm", "seeds", "length (tokens), start -> end", "cut at the cap, end", "change in cut (pp)"]
    header += [f"{d} mean change" for d in DIMS]
    rows = []
    for arm in [a for a in ARMS if a in records]:
        runs = [records[arm][s] for s in sorted(records[arm])]
        start = statistics.fmean(r["start"]["answers"]["mean_tokens"] for r in runs)
        end = [r["end"]["answers"]["mean_tokens"] for r in runs]
        row = [
            f"`{arm}`",
            ", ".join(str(s) for s in sorted(records[arm])),
            f"{start:.1f} -> {cell(end, '.1f')}",
        ]
        row += [cell([100 * r["end"]["answers"]["cut_share"] for r in runs], ".0f") + "%"]
        row += [cell([100 * change(r, "cut_share") for r in runs], "+.0f")]
        row += [cell([change(r, d) for r in runs], "+.3f") for d in DIMS]
        rows.append(row)
    arms = "\n".join(f"- `{a}`: {ARMS[a][1]}; `{' '.join(ARMS[a][0])}`" for a in ARMS if a in records)
    notes = [
        f"- `{arm}` seed {seed} differs from the arm as defined now: {'; '.join(r['differences_from_arm'])}"
        for arm, by_seed in records.items()
        for seed, r in sorted(by_seed.items())
        if r.get("differences_from_arm")
    ]
    summary = "; ".join(f"`{arm}` {headline(records[arm])}" for arm in MAIN if arm in records)
    return (
        f"# The real demo's answer length\n\nHeld-out answers to 16 questions (greedy), start -> end of 12 steps, "
        f"mean over seeds: {summary}. Machine: {machine()}.\n\n{__doc__.split(chr(10) + chr(10), 1)[1].split('Every (arm')[0]}"
        f"Arms (overrides of `python train.py`):\n\n{arms}\n\n"
        "Held-out change, start (step 0) to end (step 12), mean over seeds (each seed's value in brackets); "
        "the dimensions' means are in their own units (reward models: logits):\n\n"
        f"{md_table(header, rows)}\n\n"
        "Arms with at least three seeds: mean change with a 95% percentile bootstrap interval over seeds "
        "(2000 draws; the arms are not paired, so each arm's seeds are resampled on their own; per-question "
        "answers are not cached, so there is no question level):\n\n"
        f"{interval_table(records)}\n"
        + (
            "\nRuns that trained otherwise than their arm now composes:\n\n" + "\n".join(notes) + "\n"
            if notes
            else ""
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="write the report from the cache only")
    parser.add_argument("--ingest", nargs=3, metavar=("ARM", "SEED", "RUN_DIR"))
    parser.add_argument(
        "--allow-diff", action="store_true", help="ingest: record how the run differs from the arm"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="seeds to run")
    parser.add_argument("--arms", nargs="+", default=list(MAIN), choices=list(ARMS), help="arms to run")
    args = parser.parse_args()
    if args.ingest:
        arm, seed, run_dir = args.ingest
        save(arm, int(seed), Path(run_dir), allow=args.allow_diff)
    elif not args.report:
        for seed in args.seeds:  # seed-major: a partial run leaves every arm with the same seeds
            for arm in args.arms:
                if not (CACHE / f"{arm}-s{seed}.json").exists():
                    run(arm, seed)
    OUT.write_text(report())
    print(OUT.read_text())


if __name__ == "__main__":
    main()
