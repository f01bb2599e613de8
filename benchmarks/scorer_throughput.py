"""Throughput of every matrix scorer on this machine (samples per second).

    python benchmarks/scorer_throughput.py [--matrix medical] [--samples 512] [--repeats 5]

Scores `--samples` (prompt, answer) pairs built from the bundled prompts plus generated calculator
questions (a quarter): each prompt's expert reference and two altered versions of it (truncated; with a
wrong number), so scorers see passing and failing answers. A scorer's samples/s counts every answer of
the batch, including those it returns NaN for (the calculator verifier applies to the calculator
questions only). Each dimension's scorer runs `--repeats` times on the whole batch, interleaved across
dimensions; the median wall time gives samples/s. Writes benchmarks/results/scorer_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from quark_lightning.data import BUNDLED_PROMPTS
from quark_lightning.data.datamodule import load_prompt_records
from quark_lightning.matrix.build import build_matrix

CONF = Path(__file__).resolve().parents[1] / "conf"


def make_batch(n: int) -> tuple[list[dict], list[str]]:
    from quark_lightning.data.calculators import generate_calculator_prompts

    records = [r for r in load_prompt_records(str(BUNDLED_PROMPTS)) if r.get("reference")]
    records += generate_calculator_prompts(len(records) // 3)  # so the calculator verifier has work
    prompts, answers = [], []
    for i in range(n):
        r = records[i % len(records)]
        variant = (i // len(records)) % 3
        text = r["reference"]
        if variant == 1:
            text = " ".join(text.split()[: max(5, len(text.split()) // 3)])
        elif variant == 2:
            text = text.replace("4 g", "8 g").replace("2", "9", 1)
        prompts.append(r)
        answers.append(text)
    return prompts, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default="medical")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. matrix.dimensions.x=null")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"matrix={args.matrix}", "run_dir=/tmp/quark-bench", *args.overrides],
        )
    matrix = build_matrix(cfg.matrix)
    prompts, answers = make_batch(args.samples)
    for dim in matrix.dimensions:  # warm-up: caches, lazy model loads
        dim.scorer.score(prompts[:8], answers[:8])
    times: dict[str, list[float]] = {d.name: [] for d in matrix.dimensions}
    for _ in range(args.repeats):
        for dim in matrix.dimensions:
            start = time.perf_counter()
            dim.scorer.score(prompts, answers)
            times[dim.name].append(time.perf_counter() - start)
    rows = {
        d.name: {
            "category": d.category,
            "scorer": type(d.scorer).__name__,
            "median_seconds": statistics.median(times[d.name]),
            "samples_per_second": args.samples / statistics.median(times[d.name]),
        }
        for d in matrix.dimensions
    }
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scorer_throughput.json"), "w") as fh:
        json.dump(
            {"machine": machine, "samples": args.samples, "repeats": args.repeats, "dimensions": rows},
            fh,
            indent=2,
        )
    lines = ["| dimension | category | scorer | median s / batch | samples/s |", "|---|---|---|---:|---:|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['category']} | {r['scorer']} | {r['median_seconds']:.3f} | "
            f"{r['samples_per_second']:,.0f} |"
        )
    table = "\n".join(lines)
    with open(os.path.join(args.out, "scorer_throughput.md"), "w") as fh:
        fh.write(
            f"# Scorer throughput\n\nCommand: `python benchmarks/scorer_throughput.py --matrix {args.matrix} "
            f"--samples {args.samples}`; machine: {machine}; batch of {args.samples} answers, median of "
            f"{args.repeats} runs.\n\n{table}\n"
        )
    print(table)


if __name__ == "__main__":
    main()
