"""Throughput of every matrix scorer on this machine (samples per second).

    python benchmarks/scorer_throughput.py [--matrix medical] [--samples 512] [--repeats 5]

Scores `--samples` (prompt, answer) pairs built from the bundled prompts plus generated calculator
questions (a quarter): each prompt's expert reference and two altered versions of it (truncated; with a
wrong number), so scorers see passing and failing answers. A scorer's samples/s counts every answer of
the batch, including those it returns NaN for (the calculator verifier applies to the calculator
questions only). Each dimension's scorer runs `--repeats` times on the whole batch, interleaved across
dimensions; the median wall time gives samples/s. Writes benchmarks/results/scorer_throughput.{json,md}.

The cost of bounding the patterns (issue 17): every pattern read from a file or config is matched with
the `regex` module under a per-search time bound (quark_lightning/infra/text.py). Each dimension is
also timed, interleaved, with Python's `re` and no bound (the engine before; `--no-engine-comparison`
skips it), and the results file gives each dimension's time ratio regex / re and the ratio of the
summed times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from contextlib import contextmanager
from functools import lru_cache
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


class _UnboundedRe:
    """Python's `re`, case-insensitive, ignoring the time bound: the pattern engine before issue 17."""

    def __init__(self, pattern: str):
        self.pattern = re.compile(pattern, re.IGNORECASE)

    def search(self, text: str, timeout: float | None = None):
        return self.pattern.search(text)

    def sub(self, replacement: str, text: str, timeout: float | None = None) -> str:
        return self.pattern.sub(replacement, text)


@contextmanager
def pattern_engine(name: str):
    """`regex` (the library's bounded engine) or `re` (unbounded) for every pattern matched meanwhile."""
    from quark_lightning.infra import text

    bounded = text.compile_pattern
    if name == "re":
        text.compile_pattern = lru_cache(maxsize=4096)(_UnboundedRe)
    try:
        yield
    finally:
        text.compile_pattern = bounded


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default="medical")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--no-engine-comparison", action="store_true", help="skip the re vs regex timing")
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
    engines = ("regex",) if args.no_engine_comparison else ("regex", "re")
    for engine in engines[1:]:  # warm the other engine's pattern cache too
        with pattern_engine(engine):
            for dim in matrix.dimensions:
                dim.scorer.score(prompts[:8], answers[:8])
    times: dict[str, list[float]] = {d.name: [] for d in matrix.dimensions}
    unbounded: dict[str, list[float]] = {d.name: [] for d in matrix.dimensions}
    for repeat in range(args.repeats):
        for dim in matrix.dimensions:
            for engine in engines if repeat % 2 == 0 else engines[::-1]:  # alternate: no order bias
                with pattern_engine(engine):
                    took = time_call(lambda dim=dim: dim.scorer.score(prompts, answers))
                (times if engine == "regex" else unbounded)[dim.name].append(took)
    rows = {
        d.name: {
            "category": d.category,
            "scorer": type(d.scorer).__name__,
            "median_seconds": statistics.median(times[d.name]),
            "samples_per_second": args.samples / statistics.median(times[d.name]),
            **(
                {"median_seconds_unbounded_re": statistics.median(unbounded[d.name])}
                if unbounded[d.name]
                else {}
            ),
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
    if not args.no_engine_comparison:
        table += "\n\n" + engine_table(rows)
    with open(os.path.join(args.out, "scorer_throughput.md"), "w") as fh:
        fh.write(
            f"# Scorer throughput\n\nCommand: `python benchmarks/scorer_throughput.py --matrix {args.matrix} "
            f"--samples {args.samples}`; machine: {machine}; batch of {args.samples} answers, median of "
            f"{args.repeats} runs.\n\n{table}\n"
        )
    print(table)


def engine_table(rows: dict[str, dict]) -> str:
    """Median seconds per batch with the bounded `regex` engine vs unbounded `re`, and their ratio."""
    lines = [
        "Pattern engine cost (issue 17): the same batches, interleaved, with Python's `re` (no bound, the "
        "engine before) and the `regex` module under the per-search time bound (the library's engine).",
        "",
        "| dimension | re s / batch | regex s / batch | ratio regex / re |",
        "|---|---:|---:|---:|",
    ]
    for name, r in rows.items():
        a, b = r["median_seconds_unbounded_re"], r["median_seconds"]
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    total_re = sum(r["median_seconds_unbounded_re"] for r in rows.values())
    total = sum(r["median_seconds"] for r in rows.values())
    lines.append(f"| **all dimensions** | {total_re:.3f} | {total:.3f} | {total / total_re:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
