"""Patient cases and vignettes of the laboratory-based calculators: nephrology and electrolytes,
endocrinology, hepatology and neurology (the registry that names them is definitions.py)."""

from __future__ import annotations

import copy
import random

from quark_lightning.data.calculators.spec import Case, resolve_function
from quark_lightning.data.calculators.vignettes import (
    _adult,
    _body,
    _he,
    _his,
    _num,
    _opening,
    _prefix,
    _v,
    _with_setting,
)


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
