"""The exact answer: running a calculator (registry name or medcalc-bench `module:function`), tolerance."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from quark_lightning.data.calculators.definitions import CALCULATORS
from quark_lightning.data.calculators.spec import CalculatorError, resolve_function

REL_TOLERANCE = 0.005


def calculator_function(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A registry name (see CALCULATORS) or any medcalc-bench `module:function`."""
    if name in CALCULATORS:
        return resolve_function(CALCULATORS[name].function)
    if ":" in name:
        return resolve_function(name)
    raise CalculatorError(
        f"unknown calculator {name!r}; use one of {', '.join(CALCULATORS)} "
        "or a medcalc-bench 'module:function' such as 'mdrd_gfr:mrdr_gfr_explanation'"
    )


def run_calculator(name: str, inputs: dict[str, Any]) -> tuple[float, str]:
    """(exact answer, worked explanation) from medcalc-bench; the inputs are not modified."""
    function = calculator_function(name)
    try:
        result = function(copy.deepcopy(inputs))
    except Exception as err:  # noqa: BLE001 - any failure inside the package is an input problem
        raise CalculatorError(
            f"calculator {name!r} failed on inputs {inputs!r}: {type(err).__name__}: {err}"
        ) from err
    return result["Answer"], result["Explanation"]


def compute_calculator(name: str, inputs: dict[str, Any]) -> float:
    return run_calculator(name, inputs)[0]


def answer_tolerance(value: float, resolution: float | None) -> float:
    """Absolute tolerance: 0 for point scores, else max(0.5% of |value|, resolution / 2)."""
    if resolution == 0:
        return 0.0
    half_step = (resolution or 0.0) / 2
    return round(max(REL_TOLERANCE * abs(value), half_step), 4)
