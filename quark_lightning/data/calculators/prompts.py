"""Calculator prompts: the question, one prompt record per (seed, k), the deterministic generator."""

from __future__ import annotations

import json
import random
from typing import Any

from quark_lightning.data.calculators.answers import answer_tolerance, run_calculator
from quark_lightning.data.calculators.definitions import CALCULATORS
from quark_lightning.data.calculators.explanations import clean_explanation
from quark_lightning.data.calculators.spec import CalculatorError, CalculatorSpec, format_number

QUESTION_SUFFIX = "Give the final answer as a number."


def question(spec: CalculatorSpec) -> str:
    in_unit = f" in {spec.unit}" if spec.unit and spec.unit != "points" else ""
    method = f"{spec.method} " if spec.method else ""
    return f"{method}What is the patient's {spec.quantity}{in_unit}? {QUESTION_SUFFIX}"


def make_prompt(spec: CalculatorSpec, k: int, rng: random.Random) -> dict[str, Any]:
    case = spec.sample(rng)
    inputs = json.loads(json.dumps({key: v for key, v in case.items() if not key.startswith("_")}))
    value, explanation = run_calculator(spec.name, inputs)
    unit = f" {spec.unit}" if spec.unit else ""
    reference = f"{clean_explanation(explanation, spec.fixes)}\nThe answer is {format_number(value)}{unit}."
    return {
        "id": f"calc-{spec.name}-{k}",
        "area": spec.area,
        "messages": [{"role": "user", "content": f"{spec.vignette(case)} {question(spec)}"}],
        "reference": reference,
        "rubric": [],
        "red_flags": [],
        "answer": {
            "type": "number",
            "value": value,
            "tolerance": answer_tolerance(value, spec.resolution),
            "unit": spec.unit,
        },
        "calculator": spec.name,
        "calculator_inputs": inputs,
    }


def generate_calculator_prompts(n: int, seed: int = 0, calculators: list[str] | None = None) -> list[dict]:
    """`n` calculator prompts (round-robin over `calculators`, default all); deterministic per seed."""
    names = list(calculators) if calculators else list(CALCULATORS)
    unknown = [name for name in names if name not in CALCULATORS]
    if unknown:
        raise CalculatorError(f"unknown calculator(s) {unknown}; choose from {', '.join(CALCULATORS)}")
    random.Random(f"calc-order:{seed}").shuffle(names)
    return [
        make_prompt(CALCULATORS[names[k % len(names)]], k, random.Random(f"calc:{seed}:{k}"))
        for k in range(n)
    ]
