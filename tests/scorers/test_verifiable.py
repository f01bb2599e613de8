"""correctness_verifiable: calculator prompts from medcalc-bench and the exact numeric-answer scorer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from quark_lightning.data.calculators import (
    CALCULATORS,
    CalculatorError,
    answer_tolerance,
    compute_calculator,
    generate_calculator_prompts,
)
from quark_lightning.data.schema import validate_prompt
from quark_lightning.scorers.verifiable import CalculatorScorer, extract_final_number

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BMI_INPUTS = {"weight": [70, "kg"], "height": [175, "cm"]}


def bmi_prompt(**overrides) -> dict:
    prompt = {
        "id": "calc-bmi-hand",
        "messages": [{"role": "user", "content": "70 kg, 175 cm. What is the patient's BMI?"}],
        "answer": {"type": "number", "value": 22.857, "tolerance": 0.1143, "unit": "kg/m^2"},
        "calculator": "bmi",
        "calculator_inputs": BMI_INPUTS,
    }
    return {**prompt, **overrides}


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return generate_calculator_prompts(3 * len(CALCULATORS), seed=0)


# ---------------------------------------------------------------- the scorer


def test_wrong_calculator_answer_scores_zero_and_right_one_scores_one():
    result = CalculatorScorer().score(
        [bmi_prompt(), bmi_prompt()],
        ["BMI = 70 / 1.75^2. The answer is 22.86 kg/m^2.", "The answer is 31.2 kg/m^2."],
    )
    assert result.scores.dtype == torch.float32
    assert result.scores.tolist() == [1.0, 0.0]
    assert result.findings == [[], ["answered 31.2, expected 22.857 (tolerance 0.1143)"]]


def test_no_number_scores_zero_with_finding():
    result = CalculatorScorer().score([bmi_prompt()], ["I cannot compute that without more data."])
    assert result.scores.tolist() == [0.0]
    assert result.findings == [["no numeric answer found"]]


def test_prompts_without_numeric_answer_are_not_applicable():
    free_text = {"id": "htn-001", "messages": [{"role": "user", "content": "What is hypertension?"}]}
    text_answer = {**free_text, "answer": {"type": "text", "value": "high blood pressure"}}
    result = CalculatorScorer().score([free_text, text_answer, bmi_prompt()], ["42", "42", "22.9"])
    assert math.isnan(result.scores[0]) and math.isnan(result.scores[1])
    assert result.scores[2] == 1.0
    assert result.findings[:2] == [[], []]


def test_tolerance_is_absolute_and_inclusive():
    prompt = bmi_prompt(answer={"type": "number", "value": 10.0, "tolerance": 0.5})
    scores = CalculatorScorer().score([prompt] * 3, ["10.5", "9.5", "10.51"]).scores
    assert scores.tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 70 / 3.0625. The answer is 22.86 kg/m^2. Check: 3 steps.", 22.86),  # answer-is phrasing
        ("**Final answer:** 4 points", 4.0),
        ("Answer = 93.3 mm Hg", 93.3),
        ("Weight 70 kg, height 1.75 m, so the BMI is 22.9 kg/m2", 22.9),  # last number; unit digits skipped
        ("eGFR = 54.7 mL/min/1.73 m²", 54.7),  # '/1.73' belongs to the unit
        ("Maintenance fluids total 1,234.5 mL per day", 1234.5),  # thousands comma
        ("The free water deficit is -0.32 L", -0.32),  # negative
        ("The answer is \u22123.5", -3.5),  # Unicode minus
        ("Ranges 60-70 were considered; it is 65", 65.0),  # a range hyphen is not a sign
        ("QTc came to 445msec", 445.0),  # unit glued to the number
        ("FENa is 1.3%.", 1.3),
        ("The CHA2DS2-VASc score is 3", 3.0),  # digits inside a name are not numbers
        ("so \\boxed{22.86} (from 3 inputs)", 22.86),
        ("The value is .5 mg", 0.5),
        ("No calculation is possible.", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_recompute_uses_medcalc_rather_than_the_stored_number():
    tampered = bmi_prompt(answer={"type": "number", "value": 30.0, "tolerance": 0.1143})
    result = CalculatorScorer(recompute=True).score([tampered, tampered], ["22.86", "30"])
    assert result.scores.tolist() == [1.0, 0.0]
    assert "disagrees with medcalc-bench bmi (22.857)" in result.findings[0][0]
    # without an answer the calculator alone makes the prompt verifiable, with the generator's tolerance
    bare = bmi_prompt()
    del bare["answer"]
    assert CalculatorScorer(recompute=True).score([bare], ["22.9"]).scores.tolist() == [1.0]
    assert math.isnan(CalculatorScorer(recompute=False).score([bare], ["22.9"]).scores[0])


def test_recompute_reports_bad_inputs_with_the_prompt_id():
    broken = bmi_prompt(calculator_inputs={"weight": [70, "kg"]})
    with pytest.raises(CalculatorError, match="calc-bmi-hand.*bmi"):
        CalculatorScorer(recompute=True).score([broken], ["22.9"])


# ---------------------------------------------------------------- medcalc-bench values, hand-checked


@pytest.mark.parametrize(
    ("name", "inputs", "expected"),
    [
        # 70 kg / (1.75 m)^2 = 70 / 3.0625 = 22.857 kg/m^2
        ("bmi", BMI_INPUTS, 22.857),
        # (2 * 80 + 120) / 3 = 280 / 3 = 93.333 mm Hg
        ("mean_arterial_pressure", {"sys_bp": [120, "mm Hg"], "dia_bp": [80, "mm Hg"]}, 93.333),
        # 140 - (106 + 20) = 14 mEq/L
        (
            "anion_gap",
            {"sodium": [140, "mEq/L"], "chloride": [106, "mEq/L"], "bicarbonate": [20, "mEq/L"]},
            14,
        ),
        # 8.0 + 0.8 * (4.0 - 2.0) = 9.6 mg/dL
        ("corrected_calcium", {"calcium": [8.0, "mg/dL"], "albumin": [2.0, "g/dL"]}, 9.6),
        # RR = 60/60 = 1 s, so QTc = 400 / sqrt(1) = 400 msec
        ("qtc_bazett", {"heart_rate": [60, "beats per minute"], "qt_interval": [400, "msec"]}, 400.0),
        # age >= 75: 2, female: 1, hypertension: 1, diabetes: 1 -> 5 points
        (
            "cha2ds2_vasc",
            {
                "age": [78, "years"],
                "sex": "Female",
                "chf": False,
                "hypertension": True,
                "stroke": False,
                "tia": False,
                "thromboembolism": False,
                "vascular_disease": False,
                "diabetes": True,
            },
            5,
        ),
        # BMI 22.9 is normal, so weight = min(IBW 50 + 2.3 * (68.898 in - 60) = 70.465, 70) = 70 kg;
        # (140 - 60) * 70 / (72 * 1.0) = 5600 / 72 = 77.778 mL/min
        (
            "creatinine_clearance",
            {"sex": "Male", "age": [60, "years"], "creatinine": [1.0, "mg/dL"], **BMI_INPUTS},
            77.778,
        ),
        # eyes to pain 2 + confused 4 + withdraws 4 = 10
        (
            "glasgow_coma_scale",
            {
                "best_eye_response": "eye opening to pain",
                "best_verbal_response": "confused",
                "best_motor_response": "withdrawal from pain",
            },
            10,
        ),
    ],
)
def test_calculator_values_match_hand_computation(name, inputs, expected):
    assert compute_calculator(name, inputs) == pytest.approx(expected, abs=1e-3)


def test_registry_calls_medcalc_directly():
    from medcalc.bmi_calculator import bmi_calculator_explanation

    direct = bmi_calculator_explanation({"weight": (70, "kg"), "height": (175, "cm")})["Answer"]
    assert direct == compute_calculator("bmi", BMI_INPUTS) == 22.857


def test_tolerance_rule():
    assert answer_tolerance(22.857, 0.1) == pytest.approx(0.1143)  # 0.5% of the value
    assert answer_tolerance(9.6, 0.1) == 0.05  # half the reporting step
    assert answer_tolerance(5, 0.0) == 0.0  # point scores are exact


def test_unknown_calculator_is_a_clear_error():
    with pytest.raises(CalculatorError, match="unknown calculator.*bmi"):
        generate_calculator_prompts(2, calculators=["bmi", "apgar"])


# ---------------------------------------------------------------- the generator


def test_generator_is_deterministic_for_a_seed(prompts):
    again = generate_calculator_prompts(3 * len(CALCULATORS), seed=0)
    assert again == prompts
    assert generate_calculator_prompts(5, seed=0) == prompts[:5]  # prompt k depends only on (seed, k)
    assert generate_calculator_prompts(5, seed=1) != prompts[:5]


def test_generated_prompts_validate_and_cover_every_calculator(prompts):
    for prompt in prompts:
        assert validate_prompt(prompt, require_reference=True) == [], prompt["id"]
        assert prompt["id"] == f"calc-{prompt['calculator']}-{prompts.index(prompt)}"
        assert prompt["area"] == CALCULATORS[prompt["calculator"]].area
        assert prompt["messages"][0]["content"].endswith("Give the final answer as a number.")
        assert prompt["rubric"] == [] and prompt["red_flags"] == []
        assert prompt["answer"]["tolerance"] >= 0 and "unit" in prompt["answer"]
    assert {p["calculator"] for p in prompts} == set(CALCULATORS)
    assert len(CALCULATORS) >= 10
    assert len({p["id"] for p in prompts}) == len(prompts)


def test_reference_final_number_is_scored_correct(prompts):
    """A policy that clones the expert explanations is scored correct on every prompt."""
    references = [p["reference"] for p in prompts]
    for prompt, reference in zip(prompts, references):
        assert reference.splitlines()[-1].startswith("The answer is "), prompt["id"]
        assert extract_final_number(reference) == pytest.approx(prompt["answer"]["value"], abs=1e-9)
    result = CalculatorScorer().score(prompts, references)
    assert result.scores.tolist() == [1.0] * len(prompts)


def test_stored_inputs_reproduce_the_answer(prompts):
    """calculator_inputs survive JSON and recompute to the stored answer with the real calculator."""
    for prompt in json.loads(json.dumps(prompts)):
        assert (
            compute_calculator(prompt["calculator"], prompt["calculator_inputs"]) == prompt["answer"]["value"]
        )
    result = CalculatorScorer(recompute=True).score(prompts, [p["reference"] for p in prompts])
    assert result.scores.tolist() == [1.0] * len(prompts)
    assert not any(result.findings)


def test_cli_writes_valid_jsonl(tmp_path):
    out = tmp_path / "calc.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "quark_lightning.data.calculators",
        "--n",
        "6",
        "--seed",
        "2",
        "--output",
        str(out),
    ]
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == generate_calculator_prompts(6, seed=2)
    assert all(validate_prompt(row, require_reference=True) == [] for row in rows)
    bad = subprocess.run(
        [sys.executable, "-m", "quark_lightning.data.calculators", "--n", "1", "--calculators", "apgar"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown calculator" in bad.stderr
