"""What defines a calculator (`CalculatorSpec`), the medcalc-bench function lookup, number formatting."""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quark_lightning.infra.errors import QuarkError

Case = dict[str, Any]


class CalculatorError(QuarkError, ValueError):
    """A calculator name or its inputs are wrong; the message names which and how to fix it."""


@dataclass(frozen=True)
class CalculatorSpec:
    name: str
    function: str  # "<medcalc module>:<function>"
    area: str
    quantity: str
    unit: str
    resolution: float  # customary reporting step; 0 = integer point score, exact
    sample: Callable[[random.Random], Case]  # keys starting with "_" are vignette-only
    vignette: Callable[[Case], str]
    method: str = ""
    fixes: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def resolve_function(spec: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`"bmi_calculator:bmi_calculator_explanation"` -> the medcalc-bench function."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(f"medcalc.{module_name}")
    except ImportError as err:
        raise CalculatorError(
            f"cannot import medcalc.{module_name} ({err}); install the calculators with "
            "`pip install medcalc-bench` and check the module name"
        ) from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise CalculatorError(f"medcalc.{module_name} has no function {function_name!r}")
    return function


def format_number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")
