"""Medical-calculator prompts with exact answers, computed and explained by `medcalc-bench`.

`medcalc-bench` (PyPI, Apache-2.0; NCBI MedCalc-Bench) exposes each calculator as a function
`medcalc.<module>.<name>_explanation(inputs) -> {"Explanation": str, "Answer": number}` taking a dict of
`(value, unit)` pairs, booleans and category strings. This module samples clinically plausible patient
values with a seeded RNG, writes them into a short vignette, calls the real calculator for the exact
answer and uses its worked explanation as the expert reference (an SFT demonstration).

Interpretation and choices:

- Subset. 20 calculators whose medcalc-bench answer and explanation we checked against the published
  formula (MDCalc conventions). Left out: CKD-EPI 2021 (its explanation function uses A = 0.7 for men
  with creatinine <= 0.9 mg/dL), MELD-Na, serum osmolality and Framingham/Fridericia QTc (the
  explanation text substitutes wrong numbers although the answer is right), and scores whose vignettes
  need many inferred findings. Where the explanation has a known misprint, `fixes` corrects the text;
  samplers avoid the package's boundary slips (Child-Pugh bilirubin 2.0 and 3.0, albumin 2.8 g/dL;
  Cockcroft-Gault BMI between 24.9 and 25).
- Method. Each question names the formula variant (Bazett, Friedewald, the Cockcroft-Gault weight rule
  ...), so the expected number is unambiguous.
- Tolerance (absolute, stored in `answer.tolerance`): 0 for integer point scores; otherwise
  max(0.5% of |value|, half the calculator's customary reporting resolution), e.g. BMI 22.857 with
  resolution 0.1 -> 0.114. This admits clinically normal rounding of the final answer and the
  package's rounding of intermediate values, and rejects a wrong formula or wrong inputs.
- Determinism. Prompt k of a seed depends only on (seed, k): the calculator is the k-th of a seeded
  round-robin order and its values come from `random.Random(f"calc:{seed}:{k}")`.

Each prompt also carries `calculator` and `calculator_inputs` (the medcalc-bench inputs, JSON form),
so `CalculatorScorer(recompute=True)` can verify it with the real calculator.

CLI: `python -m quark_lightning.data.calculators --n 50 --seed 0 --output FILE.jsonl`.

Modules (one responsibility each; everything is re-exported here, so
`from quark_lightning.data.calculators import ...` keeps working):

- `spec.py`: `CalculatorSpec`, `CalculatorError`, the medcalc-bench function lookup, number formatting;
- `vignettes.py`: sampling and wording helpers;
- `definitions.py`: the registry `CALCULATORS`, and the anthropometric and cardiology case samplers and
  vignettes; `lab_cases.py`: those of the laboratory-based calculators;
- `answers.py`: running a calculator for the exact answer, the answer tolerance;
- `explanations.py`: the worked explanation cleaned up as the expert reference;
- `prompts.py`: questions and the deterministic prompt generator;
- `cli.py` (and `__main__.py`): the command line.
"""

from quark_lightning.data.calculators.answers import (
    REL_TOLERANCE,
    answer_tolerance,
    calculator_function,
    compute_calculator,
    run_calculator,
)
from quark_lightning.data.calculators.command import main
from quark_lightning.data.calculators.definitions import CALCULATORS, CHA2DS2_ITEMS
from quark_lightning.data.calculators.explanations import GLOBAL_FIXES, clean_explanation
from quark_lightning.data.calculators.lab_cases import ASCITES, ENCEPHALOPATHY, GCS_EYE, GCS_MOTOR, GCS_VERBAL
from quark_lightning.data.calculators.prompts import (
    QUESTION_SUFFIX,
    generate_calculator_prompts,
    make_prompt,
    question,
)
from quark_lightning.data.calculators.spec import (
    CalculatorError,
    CalculatorSpec,
    Case,
    format_number,
    resolve_function,
)

__all__ = [
    "ASCITES",
    "CALCULATORS",
    "CHA2DS2_ITEMS",
    "ENCEPHALOPATHY",
    "GCS_EYE",
    "GCS_MOTOR",
    "GCS_VERBAL",
    "GLOBAL_FIXES",
    "QUESTION_SUFFIX",
    "REL_TOLERANCE",
    "CalculatorError",
    "CalculatorSpec",
    "Case",
    "answer_tolerance",
    "calculator_function",
    "clean_explanation",
    "compute_calculator",
    "format_number",
    "generate_calculator_prompts",
    "main",
    "make_prompt",
    "question",
    "resolve_function",
    "run_calculator",
]
