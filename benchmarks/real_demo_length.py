"""What stops the real demo's answers growing into the completion cap, on the demo's own held-out table.

    python benchmarks/real_demo_length.py                 # runs every (arm, seed) not cached yet, then the report
    python benchmarks/real_demo_length.py --report        # the report from the cache only
    python benchmarks/real_demo_length.py --ingest ARM SEED RUN_DIR   # cache a run made by hand with ARM's overrides

Each arm is `python train.py` with its overrides (below), 12 LoRA GRPO steps of 2 prompts x 4 answers on
SmolLM2-135M-Instruct; its closed loop answers the same 16 held-out questions greedily at step 0 and 12,
scored with the matrix as configured (the loop's trained weights play no part in the table). What is
compared is that table's start-to-end change: the answers' mean length (tokens) and share cut at the
72-token cap beside the format and content dimensions. `before` is the real demo before the length work
(lr 3e-4, nothing against length); `gate` vetoes an answer the rollout cut (the `complete` gate, lr
1e-4); `control` removes every dimension's within-group length slope each step (shaping/length_neutral.py,
lr 1e-4, no gate); `placebo` trains on a score unrelated to the answer (+experiment=placebo_control), so
its change is what the update does on its own. Every arm keeps the `complete` dimension as a column
(weight 0 where it is not used). The arms of a seed start from the same model, prompts and sampling seed,
so differences between arms are paired by seed. 16 greedy questions move in steps of 6.25 pp, and five
seeds are few: read the per-seed values, not only the means.

Decision rule, written when seed 42 of every arm had finished and no other seed had: `+experiment=real_demo` adopts
the arm among `gate` and `control` whose five-seed means show (a) a held-out length change of at most +5
tokens, (b) a change in the share cut at the cap of at most +12.5 pp (two answers of 16), and (c) a format
mean change of at least -0.05; if both do, the one with the larger usefulness change; if neither does,
neither is adopted and the issue stays open.

Second rule, written on 2026-12-07 before any `control+gate` seed had run under the as-configured scoring:
`control+gate` (length control and the gate together) replaces `gate` in `+experiment=real_demo` if its
five-seed means meet (a), (b) and (c) above and its usefulness change exceeds `gate`'s with the 95%
paired seed-bootstrap interval of (control+gate - gate) excluding 0; otherwise `gate` stays.

Every (arm, seed) is cached in benchmarks/results/real_demo_length/<arm>-s<seed>.json once its last
evaluation is written, with what it trained with (a fingerprint of its .hydra/config.yaml: lr, loss, KL,
aggregator, length control, each dimension's weight, gate and scorer); a run whose fingerprint differs from
its arm's, or whose tables were not scored as configured, is refused, or, with --allow-diff, cached with the
differences listed in the report. Writes benchmarks/results/real_demo_length.md. The first measurement
(tables scored with the trained reward) is kept, frozen, in benchmarks/results/real_demo_length/trained_reward/.
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
GATE_SPEC = "{below: 1.0, mode: cap, value: -1.0, on_failure: veto}"
COMPLETE_OFF = ["matrix.dimensions.complete.weight=0.0", "matrix.dimensions.complete.gate=null"]
ARMS: dict[str, tuple[list[str], str]] = {
    "before": (
        ["+experiment=real_demo", "optimization.length_control=null", "algorithm.lr=3.0e-4", *COMPLETE_OFF],
        "the real demo before the length work: lr 3e-4, nothing against length",
    ),
    "gate": (
        [
            "+experiment=real_demo",
            "optimization.length_control=null",
            "algorithm.lr=1.0e-4",
            "matrix.dimensions.complete.weight=1.0",
            f"matrix.dimensions.complete.gate={GATE_SPEC}",
        ],
        "a cut answer ranks below every answer of its group that ended (the `complete` gate), lr 1e-4",
    ),
    "control": (
        ["+experiment=real_demo", "optimization.length_control=all", "algorithm.lr=1.0e-4", *COMPLETE_OFF],
        "every dimension's within-group length slope removed each step (shaping/length_neutral.py), lr 1e-4",
    ),
    "placebo": (["+experiment=placebo_control"], "trained on a placebo score alone, lr 1e-4"),
    "control+gate": (
        [
            "+experiment=real_demo",
            "optimization.length_control=all",
            "algorithm.lr=1.0e-4",
            "matrix.dimensions.complete.weight=1.0",
            f"matrix.dimensions.complete.gate={GATE_SPEC}",
        ],
        "length control and the `complete` gate",
    ),
}
MAIN = ("before", "gate", "control", "placebo")
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
        "scorers": history[-1].get("scorers", "trained reward"),  # "as configured" since the yardstick fix
        "overrides": yaml.safe_load((hydra_dir / "overrides.yaml").read_text()),
        "seed": config["seed"],
        "fingerprint": fingerprint(config),
        "start": view(history[0]),
        "end": view(history[-1]),
    }


def run(arm: str, seed: int) -> None:
    run_dir = ROOT / "outputs" / "real_demo_length" / "as_configured" / f"{arm}-s{seed}"
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
    if record["scorers"] != "as configured":
        diff.append(f"held-out tables scored with the {record['scorers']}, not the matrix as configured")
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


def seed_interval(a: dict[int, float], b: dict[int, float] | None = None, draws: int = 2000):
    """Mean of `a`, or of the paired difference a - b over the seeds both have, with a 95% percentile
    bootstrap over seeds (the arms of a seed share the model, prompts and sampling seed). Per-question
    answers are not cached, so this is the seed level only.  -> (point, low, high, seeds)"""
    import numpy as np

    seeds = sorted(set(a) & set(b)) if b is not None else sorted(a)
    x = np.asarray([a[s] - (b[s] if b is not None else 0.0) for s in seeds], dtype=float)
    boot = x[np.random.default_rng(0).integers(0, len(x), (draws, len(x)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi), len(seeds)


INTERVAL_KEYS = (("mean_tokens", 1.0, ".1f"), ("cut_share", 100.0, "+.0f")) + tuple(
    (d, 1.0, "+.3f") for d in DIMS
)
COLUMNS = (("before", None), ("gate", None), ("control", None), ("placebo", None))
COLUMNS += (("gate", "placebo"), ("control", "placebo"), ("control", "gate"))
COLUMNS += (("control+gate", None), ("control+gate", "gate"), ("control+gate", "placebo"))


def interval_table(records: dict[str, dict[int, dict]]) -> str:
    """Each main arm's change, and paired differences between arms, with seed-bootstrap intervals."""

    def values(arm: str, key: str, scale: float) -> dict[int, float]:
        return {s: scale * v for s, r in records[arm].items() if (v := change(r, key)) is not None}

    cols = [(a, b) for a, b in COLUMNS if a in records and (b is None or b in records)]
    rows = []
    for key, scale, fmt in INTERVAL_KEYS:
        row = [f"{key} change" + (" (pp)" if key == "cut_share" else "")]
        for a, b in cols:
            va, vb = values(a, key, scale), (values(b, key, scale) if b is not None else None)
            n = len(set(va) & set(vb)) if vb is not None else len(va)
            if n < 3:
                row.append("–")
                continue
            point, lo, hi, _ = seed_interval(va, vb)
            row.append(f"{point:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]")
        rows.append(row)
    header = ["held-out change"] + [f"`{a}`" if b is None else f"`{a}` - `{b}`" for a, b in cols]
    return md_table(header, rows)


def criteria(runs: list[dict], arm: str) -> tuple[bool, str]:
    """The rule's (a), (b), (c) on one arm's five-seed means: (all met, the line that shows them)."""
    tokens, cut, fmt = (
        statistics.fmean(scale * change(r, key) for r in runs)
        for key, scale in (("mean_tokens", 1.0), ("cut_share", 100.0), ("format_rules", 1.0))
    )
    checks = (tokens <= 5.0, cut <= 12.5, fmt >= -0.05)
    marks = " ".join(f"({c}) {'yes' if ok else 'no'}" for c, ok in zip("abc", checks))
    return all(checks), f"- `{arm}`: length {tokens:+.1f} tokens, cut {cut:+.1f} pp, format {fmt:+.3f}: {marks}"


def second_decision(records: dict[str, dict[int, dict]]) -> str:
    """The second rule of the module doc: does `control+gate` replace `gate`?"""
    runs = list(records.get("control+gate", {}).values())
    if len(runs) < 5:
        return f"Second rule: not yet judged (control+gate has {len(runs)} of 5 seeds).\n" if runs else ""
    ok, line = criteria(runs, "control+gate")
    useful = {a: {s: change(r, "usefulness") for s, r in records[a].items()} for a in ("control+gate", "gate")}
    point, lo, hi, n = seed_interval(useful["control+gate"], useful["gate"])
    better = lo > 0
    verdict = "`control+gate` replaces `gate`" if ok and better else "`gate` stays"
    return (
        f"Second rule (control+gate against gate):\n\n{line}\n- usefulness change, control+gate - gate: "
        f"{point:+.3f} [{lo:+.3f}, {hi:+.3f}] over {n} seeds: {'above 0' if better else 'not above 0'}\n\n{verdict}.\n"
    )


def decision(records: dict[str, dict[int, dict]]) -> str:
    """The decision rule of the module doc, judged on the cached five-seed means."""
    lines, passing = [], {}
    for arm in ("gate", "control"):
        runs = list(records.get(arm, {}).values())
        if len(runs) < 5:
            return f"Decision: not yet judged ({arm} has {len(runs)} of 5 seeds)."
        passing[arm], line = criteria(runs, arm)
        lines.append(line)
    chosen = [a for a, ok in passing.items() if ok]
    if len(chosen) == 2:
        chosen = [max(chosen, key=lambda a: statistics.fmean(change(r, "usefulness") for r in records[a].values()))]
    verdict = f"`{chosen[0]}` is adopted" if chosen else "neither is adopted"
    return "Decision, by the rule above:\n\n" + "\n".join(lines) + f"\n\n{verdict}.\n\n" + second_decision(records)


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
    summary = "; ".join(f"`{arm}` {headline(records[arm])}" for arm in ARMS if arm in records)
    return (
        f"# The real demo's answer length\n\nHeld-out answers to 16 questions (greedy), start -> end of 12 steps, "
        f"mean over seeds: {summary}. Machine: {machine()}.\n\n{__doc__.split(chr(10) + chr(10), 1)[1].split('Every (arm')[0]}"
        f"Arms (overrides of `python train.py`):\n\n{arms}\n\n"
        "Held-out change, start (step 0) to end (step 12), mean over seeds (each seed's value in brackets); "
        "the dimensions' means are in their own units (reward models: logits):\n\n"
        f"{md_table(header, rows)}\n\n"
        "Mean change with a 95% percentile bootstrap interval over seeds (2000 draws; at least three seeds), "
        "and paired differences between arms over the seeds both ran (the arms of a seed share model, prompts "
        "and sampling seed); per-question answers are not cached, so there is no question level:\n\n"
        f"{interval_table(records)}\n\n{decision(records)}"
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4], help="seeds to run")
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
                    OUT.write_text(report())  # a partial report after every run
    OUT.write_text(report())
    print(OUT.read_text())


if __name__ == "__main__":
    main()
