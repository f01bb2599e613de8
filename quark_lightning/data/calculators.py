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
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quark_lightning.errors import QuarkError

Case = dict[str, Any]
REL_TOLERANCE = 0.005
QUESTION_SUFFIX = "Give the final answer as a number."


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


# ---------------------------------------------------------------- medcalc-bench calls


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


def format_number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------- explanation clean-up

GLOBAL_FIXES = (
    ("\\n", "\n"),
    ("Albmumin", "Albumin"),
    ("cholestrol", "cholesterol"),
    ("The patients concentration", "The patient's concentration"),
    ("total body weight percentage", "total body water percentage"),
    ("The patient's is a ", "The patient is "),
    ("free body water deficit", "free water deficit"),
    ("male's", "males"),
    ("For patient's", "For patients"),
    ("the the ", "the "),
    ("The mean average pressure", "The mean arterial pressure"),
)


def _is_continuation(previous: str, line: str) -> bool:
    """The package wraps its criteria tables mid-sentence; such a line continues the previous one."""
    return (
        bool(previous)
        and bool(line)
        and (previous.endswith((",", "=", ":")) or line[0] in "=(+" or line[0].islower())
    )


def clean_explanation(text: str, fixes: tuple[tuple[str, str], ...] = ()) -> str:
    """The package's explanation with known misprints fixed and its source-code line wrapping undone."""
    for old, new in (*GLOBAL_FIXES, *fixes):
        text = text.replace(old, new)
    lines: list[str] = []
    for line in (" ".join(raw.split()) for raw in text.splitlines()):
        if lines and _is_continuation(lines[-1], line):
            lines[-1] += " " + line
        else:
            lines.append(line)
    text = re.sub(r"(?<=[A-Za-z0-9)^])\.(?=[A-Z][a-z])", ". ", "\n".join(lines))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------- sampling helpers


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


# ---------------------------------------------------------------- anthropometry


def _sample_bmi(rng: random.Random) -> Case:
    person = _adult(rng)
    return _with_setting({"_age": person["age"], "_sex": person["sex"], **_body(rng, person["sex"])}, rng)


def _vignette_bmi(c: Case) -> str:
    settings = ["attends a routine health check", "is seen in a weight-management clinic"]
    return f"{_opening(c, settings)} {_he(c)} weighs {_v(c['weight'])} and is {_v(c['height'])} tall."


def _vignette_bsa(c: Case) -> str:
    settings = ["is starting chemotherapy dosed by body surface area", "is reviewed before dosing a drug"]
    return f"{_opening(c, settings)} {_he(c)} weighs {_v(c['weight'])} and is {_v(c['height'])} tall."


def _sample_ibw(rng: random.Random) -> Case:
    person = _adult(rng)
    height = rng.randint(163, 195) if person["sex"] == "Male" else rng.randint(153, 183)
    return _with_setting({"_age": person["age"], "sex": person["sex"], "height": (height, "cm")}, rng)


def _vignette_ibw(c: Case) -> str:
    settings = [
        "is intubated and lung-protective tidal volumes are being set",
        "needs weight-based drug dosing",
    ]
    return f"{_opening(c, settings)} {_he(c)} is {_v(c['height'])} tall."


def _sample_fluids(rng: random.Random) -> Case:
    if rng.random() < 0.25:
        months = rng.randint(2, 11)
        age, weight = (months, "months"), (months + 9) / 2 * rng.uniform(0.85, 1.15)
    else:
        years = rng.randint(1, 12)
        age, weight = (years, "years"), 2 * (years + 4) * rng.uniform(0.85, 1.15)
    return _with_setting(
        {"_age": age, "_sex": rng.choice(["Male", "Female"]), "weight": (round(weight, 1), "kg")}, rng
    )


def _vignette_fluids(c: Case) -> str:
    n, unit = c["_age"]
    child = ("boy" if c["_sex"] == "Male" else "girl") if unit == "years" else "infant"
    settings = [
        "is admitted with gastroenteritis and cannot keep oral fluids down",
        "is nil by mouth before surgery",
    ]
    setting = settings[c["_setting"] % len(settings)]
    return f"{_a(f'{n}-{unit[:-1]}-old').capitalize()} {child} weighing {_v(c['weight'])} {setting}."


# ---------------------------------------------------------------- cardiology


def _sample_map(rng: random.Random) -> Case:
    systolic = rng.randint(85, 200)
    diastolic = rng.randint(45, min(120, systolic - 25))
    return _with_setting(
        {**_prefix(_adult(rng)), "sys_bp": (systolic, "mm Hg"), "dia_bp": (diastolic, "mm Hg")}, rng
    )


def _prefix(case: Case) -> Case:
    return {f"_{k}": v for k, v in case.items()}


def _vignette_map(c: Case) -> str:
    settings = ["is assessed in the emergency department", "is seen for a blood pressure review"]
    return f"{_opening(c, settings)} {_his(c)} blood pressure is {c['sys_bp'][0]}/{c['dia_bp'][0]} mm Hg."


def _sample_qt(rng: random.Random) -> Case:
    heart_rate = rng.randint(45, 150)
    qt = int(round(rng.uniform(360, 520) * (60 / heart_rate) ** 0.5, -1))
    return _with_setting(
        {**_prefix(_adult(rng)), "heart_rate": (heart_rate, "beats per minute"), "qt_interval": (qt, "msec")},
        rng,
    )


def _vignette_qt(c: Case) -> str:
    settings = [
        "has an ECG before starting a QT-prolonging antibiotic",
        "has an ECG after a syncopal episode",
    ]
    hr, qt = c["heart_rate"][0], c["qt_interval"][0]
    return (
        f"{_opening(c, settings)} The heart rate is {hr} beats per minute and the QT interval is {qt} msec."
    )


CHA2DS2_ITEMS = {
    "chf": "congestive heart failure",
    "hypertension": "hypertension",
    "stroke": "stroke",
    "tia": "transient ischemic attack",
    "thromboembolism": "systemic thromboembolism",
    "vascular_disease": "vascular disease (myocardial infarction, peripheral artery disease or aortic plaque)",
    "diabetes": "diabetes mellitus",
}


def _sample_cha2ds2(rng: random.Random) -> Case:
    case = {**_adult(rng, 45, 90), **{k: rng.random() < 0.3 for k in CHA2DS2_ITEMS}}
    return _with_setting(case, rng)


def _vignette_cha2ds2(c: Case) -> str:
    present = [CHA2DS2_ITEMS[k] for k in CHA2DS2_ITEMS if c[k]]
    absent = [CHA2DS2_ITEMS[k] for k in CHA2DS2_ITEMS if not c[k]]
    text = f"{_a(_who(c)).capitalize()} is found to have atrial fibrillation."
    if present:
        text += f" {_his(c)} history includes {_join(present)}."
    if absent:
        text += f" {_he(c)} has no history of {_join(absent, 'or')}."
    return text


def _sample_ldl(rng: random.Random) -> Case:
    while True:
        total, hdl, tg = rng.randint(150, 300), rng.randint(30, 90), rng.randint(60, 390)
        if total - hdl - tg / 5 >= 40:
            break
    case = {
        "total_cholestrol": (total, "mg/dL"),
        "hdl_cholestrol": (hdl, "mg/dL"),
        "triglycerides": (tg, "mg/dL"),
    }
    return _with_setting({**_prefix(_adult(rng, 30, 80)), **case}, rng)


def _vignette_ldl(c: Case) -> str:
    settings = [
        "has a fasting lipid panel for cardiovascular risk assessment",
        "is reviewed in a lipid clinic",
    ]
    return (
        f"{_opening(c, settings)} Total cholesterol is {_v(c['total_cholestrol'])}, HDL cholesterol "
        f"{_v(c['hdl_cholestrol'])} and triglycerides {_v(c['triglycerides'])}."
    )


# ---------------------------------------------------------------- nephrology and electrolytes


def _sample_crcl(rng: random.Random) -> Case:
    bmi = resolve_function("bmi_calculator:bmi_calculator_explanation")
    while True:
        person = _adult(rng)
        case = {**person, **_body(rng, person["sex"]), "creatinine": (_num(rng, 0.6, 3.5, 1), "mg/dL")}
        if not 24.9 < bmi(copy.deepcopy(case))["Answer"] < 25.0:
            return _with_setting(case, rng)


def _vignette_crcl(c: Case) -> str:
    settings = [
        "is about to start a renally cleared antibiotic",
        "is reviewed before dosing an anticoagulant",
    ]
    return (
        f"{_opening(c, settings)} {_he(c)} weighs {_v(c['weight'])}, is {_v(c['height'])} tall, "
        f"and {_his(c).lower()} serum creatinine is {_v(c['creatinine'])}."
    )


def _electrolytes(rng: random.Random) -> Case:
    sodium = rng.randint(128, 150)
    chloride = rng.randint(max(88, sodium - 40), min(115, sodium - 20))
    bicarbonate = rng.randint(6, min(32, sodium - chloride - 4))
    return {
        "sodium": (sodium, "mEq/L"),
        "chloride": (chloride, "mEq/L"),
        "bicarbonate": (bicarbonate, "mEq/L"),
    }


def _lytes_text(c: Case) -> str:
    return f"sodium {_v(c['sodium'])}, chloride {_v(c['chloride'])}, bicarbonate {_v(c['bicarbonate'])}"


def _sample_anion_gap(rng: random.Random) -> Case:
    return _with_setting({**_prefix(_adult(rng)), **_electrolytes(rng)}, rng)


def _vignette_anion_gap(c: Case) -> str:
    settings = ["presents with vomiting and rapid breathing", "is admitted with confusion after a binge"]
    return f"{_opening(c, settings)} Serum results: {_lytes_text(c)}."


def _sample_albumin_ag(rng: random.Random) -> Case:
    return _with_setting(
        {**_prefix(_adult(rng)), **_electrolytes(rng), "albumin": (_num(rng, 1.8, 4.6, 1), "g/dL")}, rng
    )


def _vignette_albumin_ag(c: Case) -> str:
    settings = ["with sepsis is in the intensive care unit", "with nephrotic syndrome is admitted unwell"]
    return f"{_opening(c, settings)} Serum results: {_lytes_text(c)}, albumin {_v(c['albumin'])}."


def _sample_fwd(rng: random.Random) -> Case:
    case = {**_adult(rng), "weight": (_num(rng, 45, 110), "kg"), "sodium": (rng.randint(148, 170), "mmol/L")}
    return _with_setting(case, rng)


def _vignette_fwd(c: Case) -> str:
    settings = [
        "is brought in drowsy after days of poor oral intake",
        "is admitted dehydrated after a heatwave",
    ]
    return f"{_opening(c, settings)} {_he(c)} weighs {_v(c['weight'])}; serum sodium is {_v(c['sodium'])}."


def _sample_mdrd(rng: random.Random) -> Case:
    return _with_setting({**_adult(rng, 25, 85), "creatinine": (_num(rng, 0.7, 5.0, 1), "mg/dL")}, rng)


def _vignette_mdrd(c: Case) -> str:
    settings = ["with chronic kidney disease is reviewed in clinic", "has routine blood tests for diabetes"]
    return f"{_opening(c, settings)} {_his(c)} serum creatinine is {_v(c['creatinine'])}."


def _sample_fena(rng: random.Random) -> Case:
    case = {
        "sodium": (rng.randint(125, 150), "mmol/L"),
        "creatinine": (_num(rng, 1.2, 6.0, 1), "mg/dL"),
        "urine_sodium": (rng.randint(5, 120), "mmol/L"),
        "urine_creatinine": (rng.randint(20, 200), "mg/dL"),
    }
    return _with_setting({**_prefix(_adult(rng)), **case}, rng)


def _vignette_fena(c: Case) -> str:
    settings = ["has acute kidney injury after several days of diarrhea", "develops oliguria after surgery"]
    return (
        f"{_opening(c, settings)} Serum sodium is {_v(c['sodium'])} and serum creatinine "
        f"{_v(c['creatinine'])}; urine sodium is {_v(c['urine_sodium'])} and urine creatinine "
        f"{_v(c['urine_creatinine'])}."
    )


# ---------------------------------------------------------------- endocrinology


def _sample_calcium(rng: random.Random) -> Case:
    case = {"calcium": (_num(rng, 6.5, 11.5, 1), "mg/dL"), "albumin": (_num(rng, 1.8, 4.6, 1), "g/dL")}
    return _with_setting({**_prefix(_adult(rng)), **case}, rng)


def _vignette_calcium(c: Case) -> str:
    settings = [
        "with chronic liver disease reports muscle cramps",
        "is admitted malnourished after a long illness",
    ]
    return (
        f"{_opening(c, settings)} Serum calcium is {_v(c['calcium'])} and serum albumin {_v(c['albumin'])}."
    )


def _sample_sodium_glucose(rng: random.Random) -> Case:
    case = {"sodium": (rng.randint(118, 140), "mEq/L"), "glucose": (rng.randint(150, 1000), "mg/dL")}
    return _with_setting({**_prefix(_adult(rng)), **case}, rng)


def _vignette_sodium_glucose(c: Case) -> str:
    settings = [
        "with type 1 diabetes presents in diabetic ketoacidosis",
        "presents with a hyperosmolar state",
    ]
    return f"{_opening(c, settings)} Serum sodium is {_v(c['sodium'])} and serum glucose {_v(c['glucose'])}."


def _sample_homa(rng: random.Random) -> Case:
    case = {"insulin": (_num(rng, 2, 40, 1), "\u00b5IU/mL"), "glucose": (rng.randint(70, 220), "mg/dL")}
    return _with_setting({**_prefix(_adult(rng, 25, 75)), **case}, rng)


def _vignette_homa(c: Case) -> str:
    settings = ["is evaluated for insulin resistance", "with central obesity has fasting bloods"]
    return f"{_opening(c, settings)} Fasting glucose is {_v(c['glucose'])} and fasting insulin {_v(c['insulin'])}."


# ---------------------------------------------------------------- hepatology


def _sample_fib4(rng: random.Random) -> Case:
    case = {
        "age": (rng.randint(30, 80), "years"),
        "_sex": rng.choice(["Male", "Female"]),
        "ast": (rng.randint(15, 200), "U/L"),
        "alt": (rng.randint(10, 250), "U/L"),
        "platelet_count": (float(rng.randint(50, 400) * 1000), "\u00b5L"),
    }
    return _with_setting(case, rng)


def _vignette_fib4(c: Case) -> str:
    settings = ["with fatty liver disease is assessed for fibrosis", "with chronic hepatitis B is reviewed"]
    platelets = f"{int(c['platelet_count'][0]):,}/\u00b5L"
    return f"{_opening(c, settings)} AST is {_v(c['ast'])}, ALT {_v(c['alt'])} and the platelet count {platelets}."


ASCITES = {"Absent": "no ascites", "Slight": "slight (mild) ascites", "Moderate": "moderate ascites"}
ENCEPHALOPATHY = {
    "No Encephalopathy": "no hepatic encephalopathy",
    "Grade 1-2": "grade 1-2 hepatic encephalopathy",
    "Grade 3-4": "grade 3-4 hepatic encephalopathy",
}


def _sample_child_pugh(rng: random.Random) -> Case:
    bilirubin = rng.choice([b / 10 for b in range(5, 80) if b not in (20, 30)])
    albumin = rng.choice([a / 10 for a in range(18, 46) if a != 28])
    case = {
        "bilirubin": (bilirubin, "mg/dL"),
        "albumin": (albumin, "g/dL"),
        "inr": _num(rng, 0.9, 3.5, 1),
        "ascites": rng.choice(list(ASCITES)),
        "encephalopathy": rng.choice(list(ENCEPHALOPATHY)),
    }
    return _with_setting({**_prefix(_adult(rng, 30, 80)), **case}, rng)


def _vignette_child_pugh(c: Case) -> str:
    settings = ["with alcohol-related cirrhosis is reviewed", "with cirrhosis from hepatitis C is admitted"]
    return (
        f"{_opening(c, settings)} Total bilirubin is {_v(c['bilirubin'])}, albumin {_v(c['albumin'])} and "
        f"INR {c['inr']}. {_he(c)} has {ASCITES[c['ascites']]} and {ENCEPHALOPATHY[c['encephalopathy']]}."
    )


# ---------------------------------------------------------------- neurology

GCS_EYE = {
    "eyes open spontaneously": "opens the eyes spontaneously",
    "eye opening to verbal command": "opens the eyes only when spoken to",
    "eye opening to pain": "opens the eyes only to a painful stimulus",
    "no eye opening": "does not open the eyes even to pain",
}
GCS_VERBAL = {
    "oriented": "is oriented to time, place and person",
    "confused": "converses but is confused and disoriented",
    "inappropriate words": "says only random, inappropriate words",
    "incomprehensible sounds": "makes only incomprehensible sounds",
    "no verbal response": "makes no sounds",
}
GCS_MOTOR = {
    "obeys commands": "obeys commands",
    "localizes pain": "localizes to a painful stimulus",
    "withdrawal from pain": "withdraws from pain",
    "flexion to pain": "shows abnormal flexion (decorticate posturing) to pain",
    "extension to pain": "shows extension (decerebrate posturing) to pain",
    "no motor response": "has no motor response to pain",
}


def _sample_gcs(rng: random.Random) -> Case:
    case = {
        "best_eye_response": rng.choice(list(GCS_EYE)),
        "best_verbal_response": rng.choice(list(GCS_VERBAL)),
        "best_motor_response": rng.choice(list(GCS_MOTOR)),
    }
    return _with_setting({**_prefix(_adult(rng)), **case}, rng)


def _vignette_gcs(c: Case) -> str:
    settings = ["is brought to the emergency department after a fall", "is found unwell at home"]
    return (
        f"{_opening(c, settings)} On assessment {_he(c).lower()} {GCS_EYE[c['best_eye_response']]}, "
        f"{GCS_VERBAL[c['best_verbal_response']]} and {GCS_MOTOR[c['best_motor_response']]}."
    )


# ---------------------------------------------------------------- the registry

_CG_RULE = (
    "Use the Cockcroft-Gault equation with this weight: actual body weight if BMI < 18.5 kg/m^2, the lower "
    "of ideal (Devine) and actual body weight if BMI is 18.5-24.9, and adjusted body weight "
    "(ideal + 0.4 x (actual - ideal)) if BMI is 25 or more."
)
_TBW_RULE = (
    "Use a total body water fraction of 0.6 for men under 65, 0.5 for women under 65 and men 65 or older, "
    "and 0.45 for women 65 or older, and a target sodium of 140 mmol/L."
)

_SPECS = [
    CalculatorSpec("bmi", "bmi_calculator:bmi_calculator_explanation", "endocrinology",
                   "body mass index (BMI)", "kg/m^2", 0.1, _sample_bmi, _vignette_bmi),
    CalculatorSpec("body_surface_area", "bsa_calculator:bsa_calculator_explaination", "pharmacology",
                   "body surface area", "m^2", 0.01, _sample_bmi, _vignette_bsa,
                   "Use the Mosteller formula."),
    CalculatorSpec("ideal_body_weight", "ideal_body_weight:ibw_explanation", "pharmacology",
                   "ideal body weight", "kg", 0.1, _sample_ibw, _vignette_ibw, "Use the Devine formula."),
    CalculatorSpec("maintenance_fluids", "maintenance_fluid_calc:maintenance_fluid_explanation", "pediatrics",
                   "maintenance intravenous fluid rate", "mL/hr", 1.0, _sample_fluids, _vignette_fluids,
                   "Use the Holliday-Segar 4-2-1 rule.",
                   (("60 mL/hr + 2 mL/kg/hr *", "60 mL/hr + 1 mL/kg/hr *"),)),
    CalculatorSpec("mean_arterial_pressure", "mean_arterial_pressure:mean_arterial_pressure_explanation",
                   "cardiology", "mean arterial pressure", "mm Hg", 1.0, _sample_map, _vignette_map,
                   "Use MAP = 2/3 x diastolic + 1/3 x systolic pressure."),
    CalculatorSpec("qtc_bazett", "qt_calculator_bazett:bazett_calculator_explanation", "cardiology",
                   "corrected QT interval (QTc)", "msec", 1.0, _sample_qt, _vignette_qt,
                   "Use the Bazett formula."),
    CalculatorSpec("cha2ds2_vasc", "cha2ds2_vasc_score:generate_cha2ds2_vasc_explanation", "cardiology",
                   "CHA2DS2-VASc score", "points", 0.0, _sample_cha2ds2, _vignette_cha2ds2),
    CalculatorSpec("ldl_cholesterol", "ldl_calculated:compute_ldl_explanation", "cardiology",
                   "LDL cholesterol", "mg/dL", 1.0, _sample_ldl, _vignette_ldl, "Use the Friedewald equation."),
    CalculatorSpec("creatinine_clearance", "creatinine_clearance:generate_cockcroft_gault_explanation",
                   "nephrology", "creatinine clearance", "mL/min", 1.0, _sample_crcl, _vignette_crcl, _CG_RULE),
    CalculatorSpec("mdrd_gfr", "mdrd_gfr:mrdr_gfr_explanation", "nephrology", "estimated GFR",
                   "mL/min/1.73 m^2", 1.0, _sample_mdrd, _vignette_mdrd,
                   "Use the 4-variable MDRD Study equation (constant 175) without a race coefficient."),
    CalculatorSpec("anion_gap", "anion_gap:compute_anion_gap_explanation", "nephrology", "anion gap",
                   "mEq/L", 1.0, _sample_anion_gap, _vignette_anion_gap,
                   "Use sodium - (chloride + bicarbonate)."),
    CalculatorSpec("albumin_corrected_anion_gap",
                   "albumin_corrected_anion:compute_albumin_corrected_anion_explanation", "nephrology",
                   "albumin-corrected anion gap", "mEq/L", 0.1, _sample_albumin_ag, _vignette_albumin_ag,
                   "Use anion gap + 2.5 x (4 - albumin in g/dL)."),
    CalculatorSpec("free_water_deficit", "free_water_deficit:free_water_deficit_explanation", "nephrology",
                   "free water deficit", "L", 0.1, _sample_fwd, _vignette_fwd, _TBW_RULE),
    CalculatorSpec("fena", "compute_fena:compute_fena_explanation", "nephrology",
                   "fractional excretion of sodium (FENa)", "%", 0.01, _sample_fena, _vignette_fena),
    CalculatorSpec("corrected_calcium", "calcium_correction:calculate_corrected_calcium_explanation",
                   "endocrinology", "albumin-corrected calcium", "mg/dL", 0.1, _sample_calcium, _vignette_calcium,
                   "Use corrected calcium = calcium + 0.8 x (4.0 - albumin in g/dL)."),
    CalculatorSpec("sodium_correction_hyperglycemia",
                   "sch:compute_sodium_correction_hyperglycemia_explanation", "endocrinology",
                   "glucose-corrected sodium", "mEq/L", 0.1, _sample_sodium_glucose, _vignette_sodium_glucose,
                   "Use the Hillier correction: measured sodium + 0.024 x (glucose in mg/dL - 100)."),
    CalculatorSpec("homa_ir", "homa_ir:compute_homa_ir_explanation", "endocrinology", "HOMA-IR", "", 0.1,
                   _sample_homa, _vignette_homa, "Use HOMA-IR = insulin (uIU/mL) x glucose (mg/dL) / 405."),
    CalculatorSpec("fib4", "fibrosis_4:compute_fib4_explanation", "gastroenterology", "FIB-4 index", "", 0.01,
                   _sample_fib4, _vignette_fib4),
    CalculatorSpec("child_pugh", "child_pugh_score:compute_child_pugh_score_explanation", "gastroenterology",
                   "Child-Pugh score", "points", 0.0, _sample_child_pugh, _vignette_child_pugh),
    CalculatorSpec("glasgow_coma_scale", "glasgow_coma_score:compute_glasgow_coma_score_explanation",
                   "neurology", "Glasgow Coma Scale score", "points", 0.0, _sample_gcs, _vignette_gcs),
]  # fmt: skip
CALCULATORS: dict[str, CalculatorSpec] = {spec.name: spec for spec in _SPECS}


# ---------------------------------------------------------------- prompts


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


if __name__ == "__main__":
    raise SystemExit(main())
