"""HealthBench-format loading, conversion, the HealthBench score, the matrix scorer and the CLI (no network)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from quark_lightning.data.datamodule import load_prompt_records
from quark_lightning.data.healthbench import load_healthbench
from quark_lightning.data.schema import DataValidationError
from quark_lightning.scorers.healthbench_score import AXIS_TO_DIMENSION, HealthBenchScorer, healthbench_score
from quark_lightning.scorers.rubric_matchers import RegexMatcher

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "healthbench_mini.jsonl")


def _write(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return str(path)


def _row(pid: str = "x-1", **overrides):
    row = {
        "prompt_id": pid,
        "prompt": [{"role": "user", "content": "Is it safe to take paracetamol with ibuprofen?"}],
        "rubrics": [{"criterion": "Says yes for most adults.", "points": 3, "tags": ["axis:accuracy"]}],
        "example_tags": ["theme:context_seeking"],
        "ideal_completions_data": None,
    }
    row.update(overrides)
    return row


# ------------------------------------------------------------------------------------------ conversion


def test_fixture_conversion():
    records = load_healthbench(FIXTURE)
    assert [r["id"] for r in records] == [f"hbm-00{i}" for i in range(1, 7)]
    first = records[0]
    assert first["area"] == "emergency_referrals"
    assert first["example_tags"] == ["theme:emergency_referrals"]
    assert [i["id"] for i in first["rubric"]] == ["c1", "c2", "c3", "c4", "c5"]
    assert [i["type"] for i in first["rubric"]] == ["important"] * 3 + ["pitfall"] * 2
    assert [i["points"] for i in first["rubric"]] == [10, 5, 3, 8, 4]
    assert [i["hb_points"] for i in first["rubric"]] == [10, 5, 3, -8, -4]
    assert [i["axis"] for i in first["rubric"]] == ["accuracy", "completeness", "completeness"] + [
        "accuracy"
    ] * 2
    assert all(i["any"] == [] for r in records for i in r["rubric"])
    assert not any(i["type"] == "essential" for r in records for i in r["rubric"])
    assert "reference" not in first and "prompt" not in first and "rubrics" not in first
    multi = records[1]
    assert [m["role"] for m in multi["messages"]] == ["user", "assistant", "user"]
    assert multi["rubric"][-1]["axis"] == "communication_quality"
    assert records[3]["reference"].startswith("For most adults")
    assert records[3]["messages"][0]["role"] == "system"
    assert records[5]["area"] == "general"  # no theme tag


def test_converted_records_are_valid_prompts(tmp_path):
    path = _write(tmp_path / "p.jsonl", load_healthbench(FIXTURE))
    assert len(load_prompt_records(path)) == 6


def test_axis_to_dimension_covers_the_five_axes():
    assert set(AXIS_TO_DIMENSION) == {
        "accuracy",
        "completeness",
        "communication_quality",
        "context_awareness",
        "instruction_following",
    }
    assert AXIS_TO_DIMENSION["accuracy"] == "correctness_atomic"


def test_missing_axis_is_unspecified(tmp_path):
    rubrics = [
        {"criterion": "Mentions rest.", "points": 2, "tags": []},
        {"criterion": "No tags.", "points": 1},
    ]
    path = _write(tmp_path / "hb.jsonl", [_row(rubrics=rubrics, example_tags=[], extra="kept")])
    (record,) = load_healthbench(path)
    assert [i["axis"] for i in record["rubric"]] == ["unspecified", "unspecified"]
    assert record["extra"] == "kept"


# ------------------------------------------------------------------------------------------ validation


def test_malformed_rows_are_all_reported(tmp_path):
    rows = [
        _row("ok-1"),
        _row("", prompt=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        _row(
            "bad-2",
            rubrics=[{"criterion": "Says x.", "points": 0, "tags": ["axis:accuracy", "axis:completeness"]}],
        ),
        _row("bad-3", rubrics=[{"criterion": "Harmful.", "points": -3, "tags": []}], example_tags="theme:x"),
        _row("ok-1"),
        _row("bad-5", ideal_completions_data={"ideal_completion": 5}, rubrics=[]),
    ]
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataValidationError) as info:
        load_healthbench(path)
    errors = info.value.errors
    expected = [
        f"{path}:2: field 'prompt_id'",
        f"{path}:2: field 'prompt': the last message must be from the 'user'",
        f"{path}:3: field 'rubrics[0].points': must be a non-zero number",
        f"{path}:3: field 'rubrics[0].tags'",
        f"{path}:4: field 'rubrics': needs at least one criterion with positive points",
        f"{path}:4: field 'example_tags'",
        f"{path}:5: field 'prompt_id': 'ok-1' already used on line 1",
        f"{path}:6: field 'rubrics': must be a non-empty list",
        f"{path}:6: field 'ideal_completions_data.ideal_completion'",
    ]
    for prefix in expected:
        assert any(e.startswith(prefix) for e in errors), (prefix, errors)
    assert not any(e.startswith(f"{path}:1:") for e in errors)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        load_healthbench(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataValidationError, match="empty"):
        load_healthbench(str(empty))


# --------------------------------------------------------------------------------------------- scoring


def _crit(points: float, axis: str) -> dict:
    return {"criterion": f"{axis} {points}", "points": points, "tags": [f"axis:{axis}"]}


RUBRICS = [
    [
        _crit(5, "accuracy"),
        _crit(3, "completeness"),
        _crit(-4, "accuracy"),
        _crit(2, "communication_quality"),
    ],
    [_crit(4, "accuracy"), _crit(-6, "accuracy"), _crit(2, "completeness")],
    [_crit(2, "completeness"), _crit(2, "accuracy")],
]
MET = [[True, False, True, True], [False, True, False], [True, True]]


def test_healthbench_score_by_hand():
    result = healthbench_score(MET, RUBRICS)
    # (5 - 4 + 2) / 10 = 0.3;  -6 / 6 = -1.0 (negative, kept);  4 / 4 = 1.0
    assert result["per_example"] == pytest.approx([0.3, -1.0, 1.0])
    assert result["overall"] == pytest.approx((0.3 - 1.0 + 1.0) / 3)
    assert result["n"] == 3
    axes = result["axes"]
    # accuracy: (5 - 4) / 5 = 0.2, -6 / 4 = -1.5, 2 / 2 = 1.0 -> mean -0.1, clipped to 0
    assert axes["accuracy"]["score"] == 0.0 and axes["accuracy"]["n"] == 3
    # completeness: 0 / 3, 0 / 2, 2 / 2 -> 1/3
    assert axes["completeness"]["score"] == pytest.approx(1 / 3)
    # communication_quality: only the first example has one -> 2 / 2
    assert axes["communication_quality"] == {
        "score": 1.0,
        "std_error": 0.0,
        "ci_low": 1.0,
        "ci_high": 1.0,
        "n": 1,
    }


def test_mean_is_clipped_not_each_example():
    rubrics = [
        [_crit(4, "accuracy"), _crit(-4, "accuracy")],
        [_crit(2, "accuracy"), _crit(2, "completeness")],
    ]
    result = healthbench_score([[False, True], [True, False]], rubrics)
    assert result["per_example"] == pytest.approx([-1.0, 0.5])
    assert result["overall"] == 0.0  # mean(-1.0, 0.5) = -0.25 -> 0; clipping each example would give 0.25


def test_converted_items_score_like_the_original():
    records = load_healthbench(FIXTURE)
    original = [json.loads(line)["rubrics"] for line in open(FIXTURE, encoding="utf-8")]
    met = [[k % 2 == 0 for k in range(len(r))] for r in original]
    a = healthbench_score(met, original)
    b = healthbench_score(met, [r["rubric"] for r in records])
    assert a["per_example"] == pytest.approx(b["per_example"])
    assert a["overall"] == pytest.approx(b["overall"]) and a["std_error"] == pytest.approx(b["std_error"])


def test_bootstrap_std_error_is_seeded_and_plausible():
    rng = np.random.default_rng(1)
    rubrics = [[_crit(5, "accuracy"), _crit(5, "completeness")] for _ in range(200)]
    met = [[bool(x), bool(y)] for x, y in rng.integers(0, 2, size=(200, 2))]
    a, b = healthbench_score(met, rubrics, seed=3), healthbench_score(met, rubrics, seed=3)
    assert a["std_error"] == b["std_error"]
    values = np.array(a["per_example"])
    analytic = values.std() / math.sqrt(values.size)
    assert 0.7 * analytic < a["std_error"] < 1.3 * analytic
    same = healthbench_score([[True]] * 5, [[_crit(1, "accuracy")]] * 5)
    assert same["overall"] == 1.0 and same["std_error"] == 0.0


def test_healthbench_score_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="grades"):
        healthbench_score([[True]], [[_crit(1, "accuracy"), _crit(2, "accuracy")]])


# ---------------------------------------------------------------------------------------------- scorer


class StubMatcher:
    """Met when the answer names the item id (e.g. 'c1 c4'); records each batched call."""

    def __init__(self):
        self.calls = 0

    def match(self, pairs):
        self.calls += 1
        return [item["id"] in answer.split() for item, answer in pairs]


def test_scorer_with_stub_matcher():
    records = load_healthbench(FIXTURE)
    no_hb = {
        "id": "own-1",
        "messages": records[0]["messages"],
        "rubric": [{"id": "e1", "type": "essential", "text": "x", "any": ["x"]}],
    }
    no_rubric = {"id": "own-2", "messages": records[0]["messages"]}
    stub = StubMatcher()
    scorer = HealthBenchScorer(grader=stub)
    result = scorer.score([records[0], records[1], no_hb, no_rubric], ["c1 c2 c4", "c5", "x", "c1"])
    assert stub.calls == 1
    scores = result.scores.tolist()
    assert scores[0] == pytest.approx((10 + 5 - 8) / 18)
    assert scores[1] == pytest.approx(-6 / 20)  # negative: unclipped
    assert math.isnan(scores[2]) and math.isnan(scores[3])
    f0 = result.findings[0]
    assert any(f.startswith("met negative criterion c4 (-8 points, axis accuracy)") for f in f0)
    assert any(f.startswith("missed positive criterion c3 (+3 points, axis completeness)") for f in f0)
    assert not any(" c1 " in f or " c2 " in f or " c5 " in f for f in f0)
    assert result.findings[2] == [] and result.findings[3] == []


def test_scorer_matches_healthbench_score():
    records = load_healthbench(FIXTURE)
    answers = ["c1 c3", "c1 c2 c5", "c4", "c1 c2 c3", "c1 c4", "c2"]
    result = HealthBenchScorer(grader=StubMatcher()).score(records, answers)
    met = [[i["id"] in a.split() for i in r["rubric"]] for r, a in zip(records, answers)]
    expected = healthbench_score(met, [r["rubric"] for r in records])["per_example"]
    assert result.scores.tolist() == pytest.approx(expected)


def test_scorer_axes_restriction():
    (record,) = load_healthbench(FIXTURE)[:1]
    scorer = HealthBenchScorer(grader=StubMatcher(), axes=["completeness"])
    assert scorer.score([record], ["c2"]).scores.tolist() == pytest.approx([5 / 8])


def test_scorer_builds_named_matchers():
    records = load_healthbench(FIXTURE)
    regex = HealthBenchScorer(grader="regex")
    assert isinstance(regex.grader.matcher, RegexMatcher)
    # converted rows carry no patterns: regex meets nothing, so each score is 0
    assert regex.score(records[:2], ["call emergency services", "ORS"]).scores.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="published HealthBench grader needs a judge"):
        HealthBenchScorer()  # the default, the published grader, needs the run's judge
    with pytest.raises(ValueError, match="expected one of published, llm_answer_only"):
        HealthBenchScorer(grader="llm")


# ------------------------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "quark_lightning.data.healthbench", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_converts(tmp_path):
    out = tmp_path / "prompts.jsonl"
    proc = _cli("--input", FIXTURE, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    records = load_prompt_records(str(out))
    assert [r["id"] for r in records] == [f"hbm-00{i}" for i in range(1, 7)]
    assert records == load_healthbench(FIXTURE)


def test_cli_reports_bad_rows(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [_row("a", rubrics="none")])
    proc = _cli("--input", path)
    assert proc.returncode == 2
    assert f"{path}:1: field 'rubrics'" in proc.stderr


def test_healthbench_score_is_reported_beside_ours(tmp_path):
    """evaluate.py's helper: the HealthBench score of converted prompts, with a deterministic matcher."""
    from omegaconf import OmegaConf

    from quark_lightning.data.healthbench import load_healthbench
    from quark_lightning.evaluation.healthbench_section import healthbench_beside

    prompts = load_healthbench(str(FIXTURE))
    cfg = OmegaConf.create({"seed": 0, "healthbench": {"grader": "regex", "grader_kwargs": {}}})
    result = healthbench_beside(cfg, prompts, ["anything"] * len(prompts))
    # regex meets nothing on converted rows (no patterns): every example scores 0, so the overall is 0
    assert result["overall"] == 0.0 and result["n"] == len(prompts) and "axes" in result
    assert result["grader"] == "regex" and result["ungraded"] == 0
    assert healthbench_beside(OmegaConf.create({"seed": 0}), prompts, ["x"] * len(prompts)) is None
