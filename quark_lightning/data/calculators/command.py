"""`python -m quark_lightning.data.calculators`: write calculator prompts as JSONL."""

from __future__ import annotations

import argparse
import json
import sys

from quark_lightning.data.calculators.definitions import CALCULATORS
from quark_lightning.data.calculators.prompts import generate_calculator_prompts
from quark_lightning.data.calculators.spec import CalculatorError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quark_lightning.data.calculators",
        description="Write medical-calculator prompts (JSONL) verified by medcalc-bench.",
    )
    parser.add_argument("--n", type=int, default=50, help="number of prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calculators", nargs="*", default=None, help=f"subset of: {' '.join(CALCULATORS)}")
    parser.add_argument("--output", default=None, help="JSONL file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        prompts = generate_calculator_prompts(args.n, args.seed, args.calculators)
    except CalculatorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(lines)
    else:
        sys.stdout.write(lines)
    return 0
