"""The 20 calculators: per calculator a seeded patient-case sampler, its vignette, and the registry. The
anthropometric and cardiology cases are here, the laboratory-based ones in lab_cases.py."""

from __future__ import annotations

import random

from quark_lightning.data.calculators.lab_cases import (
    _sample_albumin_ag,
    _sample_anion_gap,
    _sample_calcium,
    _sample_child_pugh,
    _sample_crcl,
    _sample_fena,
    _sample_fib4,
    _sample_fwd,
    _sample_gcs,
    _sample_homa,
    _sample_mdrd,
    _sample_sodium_glucose,
    _vignette_albumin_ag,
    _vignette_anion_gap,
    _vignette_calcium,
    _vignette_child_pugh,
    _vignette_crcl,
    _vignette_fena,
    _vignette_fib4,
    _vignette_fwd,
    _vignette_gcs,
    _vignette_homa,
    _vignette_mdrd,
    _vignette_sodium_glucose,
)
from quark_lightning.data.calculators.spec import CalculatorSpec, Case
from quark_lightning.data.calculators.vignettes import (
    _a,
    _adult,
    _body,
    _he,
    _his,
    _join,
    _opening,
    _prefix,
    _v,
    _who,
    _with_setting,
)

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
