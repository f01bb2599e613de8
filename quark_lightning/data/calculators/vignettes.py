"""Sampling and wording helpers shared by the calculators' patient cases and vignettes."""

from __future__ import annotations

import random
from typing import Any

from quark_lightning.data.calculators.spec import Case, format_number


def _num(rng: random.Random, lo: float, hi: float, digits: int = 0) -> float | int:
    value = round(rng.uniform(lo, hi), digits)
    return int(value) if digits == 0 else value


def _adult(rng: random.Random, lo: int = 18, hi: int = 90) -> Case:
    return {"age": (rng.randint(lo, hi), "years"), "sex": rng.choice(["Male", "Female"])}


def _body(rng: random.Random, sex: str) -> Case:
    height = rng.randint(160, 195) if sex == "Male" else rng.randint(150, 183)
    return {"height": (height, "cm"), "weight": (_num(rng, 45, 130), "kg")}


def _who(case: Case) -> str:
    """'54-year-old man' (or woman) from the case's age and sex, real or vignette-only."""
    age = case.get("age", case.get("_age"))[0]
    sex = case.get("sex", case.get("_sex"))
    return f"{age}-year-old {'man' if sex == 'Male' else 'woman'}"


def _a(phrase: str) -> str:
    """'a 54-year-old ...', 'an 80-year-old ...', 'an 11-year-old ...'."""
    vowel_sound = phrase[0] in "aeiou8" or phrase.startswith(("11-", "18-"))
    return f"{'an' if vowel_sound else 'a'} {phrase}"


def _join(items: list[str], word: str = "and") -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


def _he(case: Case) -> str:
    return "He" if case.get("sex", case.get("_sex")) == "Male" else "She"


def _his(case: Case) -> str:
    return "His" if case.get("sex", case.get("_sex")) == "Male" else "Her"


def _v(pair: tuple[Any, str]) -> str:
    return f"{format_number(pair[0])} {pair[1]}"


def _opening(case: Case, settings: list[str]) -> str:
    return f"{_a(_who(case)).capitalize()} {settings[case['_setting'] % len(settings)]}."


def _with_setting(case: Case, rng: random.Random) -> Case:
    case["_setting"] = rng.randrange(1000)
    return case


def _prefix(case: Case) -> Case:
    return {f"_{k}": v for k, v in case.items()}
