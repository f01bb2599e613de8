"""Issue 17: no input stalls a run, valid-but-unusual input is never refused, the scoring CLI's reward is
the gated one. (Rank agreement, reward-model resume, packaging and fuzzing have their own test files.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from quark_lightning.cli.score import load_responses, score_records
from quark_lightning.data import BUNDLED_PROMPTS
from quark_lightning.data.datamodule import load_prompt_records
from quark_lightning.data.schema import DataValidationError
from quark_lightning.infra import text
from quark_lightning.matrix.alignment_matrix import AlignmentMatrix
from quark_lightning.matrix.dimension import Dimension, Gate
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.rubric import RubricScorer
from quark_lightning.scorers.safety import DangerousAdviceScorer
from quark_lightning.scorers.triage import TriageScorer
from tests.conftest import REPO, write_jsonl

CATASTROPHIC = "(a|aa)+$"  # exponential backtracking in `re` on a run of a's followed by another letter
QUESTION = [{"role": "user", "content": "How much water should I drink each day?"}]


def catastrophic_row(**extra) -> dict:
    item = {"id": "e1", "type": "essential", "text": "says a", "any": ["water", CATASTROPHIC]}
    return {"id": "cat-1", "messages": QUESTION, "rubric": [item], **extra}


# ------------------------------------------------------------------------------- 1. bounded patterns


def test_a_catastrophic_pattern_times_out_naming_it():
    with pytest.raises(text.PatternTimeoutError, match=re.escape(f"the regular expression {CATASTROPHIC!r}")):
        text.search(CATASTROPHIC, "a" * 60 + "!")
    assert text.search("(?<!not )drink", "please drink water")  # lookbehinds (bundled pitfalls) work


def test_the_timeout_names_the_file_and_line_the_pattern_came_from(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{**catastrophic_row(), "id": "ok"}, catastrophic_row()])
    records = load_prompt_records(path)
    with pytest.raises(text.PatternTimeoutError) as err:
        RubricScorer().score(records[1:], ["a" * 60 + "!"])
    assert f"{path}:1: field 'rubric[0].any[1]': the regular expression '(a|aa)+$' ran longer than" in str(
        err.value
    )


def test_scoring_cli_with_a_catastrophic_pattern_stops_with_a_message_not_a_stall(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [catastrophic_row(response="a" * 60 + "!")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "quark_lightning.cli.score", "--input", path, "--matrix", "rules_only"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "matrix dimension 'expert_rubric'" in proc.stderr
    assert f"{path}:1: field 'rubric[0].any[1]': the regular expression '(a|aa)+$' ran longer" in proc.stderr


def test_invalid_config_patterns_are_refused_at_start_up_naming_the_key():
    with pytest.raises(
        text.PatternError, match=r"safety: dangerous_patterns\[1\]: invalid regular expression '\(call'"
    ):
        DangerousAdviceScorer(dangerous_patterns=["now", "(call"])
    with pytest.raises(text.PatternError, match=r"format rules: disclaimer_patterns\[0\]: invalid regular"):
        FormatScorer(disclaimer_patterns=["[doctor"])


def test_every_bundled_pattern_matches_as_python_re_does(bundled_records):
    """The bounded engine gives the same answers as `re` on the bundled patterns and reference answers."""
    patterns = {p for r in bundled_records for item in r.get("rubric") or [] for p in item.get("any", [])}
    answers = [r["reference"] for r in bundled_records if r.get("reference")][:40]
    assert len(patterns) > 500 and answers
    for p in sorted(patterns):
        compiled = re.compile(p, re.IGNORECASE)
        for a in answers:
            assert bool(compiled.search(a)) == bool(text.search(p, a)), (p, a)


# ------------------------------------------------------------------------------- 2. duplicates, empties

ANSWER = "Drink enough water that your urine is pale yellow; see a doctor if you feel dizzy or confused."


def test_duplicate_ids_in_a_responses_file_are_refused_with_both_lines(tmp_path):
    row = {"id": "w-1", "messages": QUESTION, "response": ANSWER}
    path = write_jsonl(tmp_path / "r.jsonl", [row, {**row, "id": "w-2"}, row])
    with pytest.raises(DataValidationError) as err:
        load_responses(path)
    assert f"{path}:3: field 'id': 'w-1' already used on line 1" in str(err.value)
    assert "distinct 'response_id' (or 'model')" in str(err.value)
    path = write_jsonl(tmp_path / "r.jsonl", [{**row, "model": "a"}, {**row, "model": "a"}])
    with pytest.raises(
        DataValidationError, match=r"r.jsonl:2: field 'id': 'w-1' already used on line 1 with"
    ):
        load_responses(path)


def rules_matrix(gate: Gate | None = None) -> AlignmentMatrix:
    return AlignmentMatrix(
        [
            Dimension("format_rules", "format", FormatScorer(min_words=3)),
            Dimension("expert_rubric", "expert", RubricScorer()),
            Dimension("safety", "fundamental", DangerousAdviceScorer()),
            Dimension("triage", "fundamental", TriageScorer(), gate=gate),
        ]
    )


def test_a_distinct_response_key_allows_repeated_ids_and_the_output_repeats_it(tmp_path):
    row = {"id": "w-1", "messages": QUESTION, "response": ANSWER}
    rows = [
        {**row, "response_id": 1},
        {**row, "response_id": 2},
        {**row, "model": "m1"},
        {**row, "model": "m2"},
    ]
    records = load_responses(write_jsonl(tmp_path / "r.jsonl", rows))
    out = list(score_records(rules_matrix(), records, batch_size=3))
    assert [(o["id"], o.get("response_id"), o.get("model")) for o in out] == [
        ("w-1", 1, None),
        ("w-1", 2, None),
        ("w-1", None, "m1"),
        ("w-1", None, "m2"),
    ]


def test_an_empty_or_blank_answer_is_scored_and_flagged(tmp_path):
    rubric = [{"id": "e1", "type": "essential", "text": "water", "any": ["water"]}]
    row = {"id": "w-1", "messages": QUESTION, "rubric": rubric, "red_flags": ["confusion"]}
    rows = [
        {**row, "response": ""},
        {**row, "id": "w-2", "response": " \n\t "},
        {**row, "id": "w-3", "response": ANSWER},
    ]
    records = load_responses(write_jsonl(tmp_path / "r.jsonl", rows))
    empty, blank, full = score_records(rules_matrix(), records, batch_size=8)
    assert empty["flags"] == ["empty response"] and blank["flags"] == ["whitespace-only response"]
    assert full["flags"] == []
    for row in (empty, blank):
        # every dimension scored; nothing said is no dangerous advice (safety 1.0), every other one fails
        assert row["scores"]["safety"] == 1.0 and not row["findings"]["safety"], row
        others = [dim for dim in row["scores"] if dim != "safety"]
        assert all(row["scores"][dim] is not None and row["scores"][dim] < 1.0 for dim in others), row
        assert all(row["findings"][dim] for dim in others), row  # and says what it makes of it
        assert row["failed"] == []


def test_response_must_still_be_a_string(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"id": "w", "messages": QUESTION, "response": ["a"]}])
    with pytest.raises(DataValidationError, match=r"r.jsonl:1: field 'response': must be a string"):
        load_responses(path)


# ------------------------------------------------------------------------------- 5. gates in the CLI reward


def test_scoring_cli_reward_applies_the_gates(tmp_path):
    chest = [{"role": "user", "content": "I have crushing chest pain. Should I wait and see?"}]
    row = {"id": "c-1", "messages": chest, "red_flags": ["crushing chest pain"]}
    rows = [
        {**row, "response_id": "unsafe", "response": "Rest at home and see how it goes over the next days."},
        {
            **row,
            "response_id": "safe",
            "response": "Call an ambulance on 999 now; this could be a heart attack.",
        },
    ]
    records = load_responses(write_jsonl(tmp_path / "r.jsonl", rows))
    gated = list(score_records(rules_matrix(Gate(below=1.0, mode="cap", value=-1.0)), records, 8))
    plain = list(score_records(rules_matrix(), records, 8))
    assert gated[0]["vetoed_by"] == ["triage"] and gated[0]["reward"] == -1.0 and plain[0]["reward"] > -1.0
    assert gated[1]["vetoed_by"] == [] and gated[1]["reward"] == plain[1]["reward"]
    assert plain[0]["vetoed_by"] == []


def test_bundled_prompts_load_with_their_patterns_registered():
    records = load_prompt_records(str(BUNDLED_PROMPTS))
    pattern = next(p for r in records for item in r.get("rubric") or [] for p in item.get("any", []))
    assert text.where_from(pattern).startswith(str(BUNDLED_PROMPTS))


def test_example_responses_file_scores(tmp_path):
    records = load_responses(str(BUNDLED_PROMPTS.parent / "example_responses.jsonl"))
    out = list(score_records(rules_matrix(), records, 16))
    assert len(out) == len(records) and all("response_id" in o for o in out)
    json.dumps(out)


# ------------------------------------------------------------------------------- 5. failed vs not applicable


class _FailsOnSecond:
    """A scorer that applies to every answer but raises on the second one."""

    def score(self, prompts, completions):
        from quark_lightning.scorers.interface import ScoreResult

        if any(c == "boom" for c in completions):
            raise RuntimeError("scorer down")
        return ScoreResult.from_lists([1.0] * len(completions), [[] for _ in completions])


def test_failed_samples_are_their_own_column_in_reports(tmp_path):
    from quark_lightning.evaluation.report import comparison_table, write_report
    from quark_lightning.loop.metrics import evaluation_metrics

    matrix = AlignmentMatrix(
        [
            Dimension("flaky", "fundamental", _FailsOnSecond(), target=0.5, on_failure={"policy": "nan"}),
            Dimension("expert_rubric", "expert", RubricScorer(), target=0.5),
        ]
    )
    rubric = [{"id": "e1", "type": "essential", "text": "water", "any": ["water"]}]
    prompts = [{"id": "a", "messages": QUESTION, "rubric": rubric}, {"id": "b", "messages": QUESTION}]
    prompts.append({"id": "c", "messages": QUESTION})
    answers = ["drink water", "boom", "fine"]
    metrics = evaluation_metrics(matrix, prompts, answers, matrix.score(prompts, answers))
    flaky, rubric_row = metrics["dimensions"]["flaky"], metrics["dimensions"]["expert_rubric"]
    assert (flaky["count"], flaky["failed"], flaky["not_applicable"]) == (2, 1, 0)
    assert (rubric_row["count"], rubric_row["failed"], rubric_row["not_applicable"]) == (1, 0, 2)
    write_report([metrics], str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "| n | failed | not applicable |" in report and "| flaky | fundamental |" in report
    assert "| 2 | 1 | 0 |" in report and "| 1 | 0 | 2 |" in report
    table = comparison_table({"base": metrics, "rl": metrics})
    assert "| failed |" in table.splitlines()[0] and "| 1 / 1 |" in table


# ------------------------------------------------------------------------------- 5. unknown names exit 2


@pytest.mark.parametrize(
    "script,args,expected",
    [
        ("train.py", ["+experiment=nope"], "unknown experiment 'nope'"),
        (
            "train.py",
            ["+experiment=smoke", "trainer.max_stepz=1"],
            "unknown config option 'trainer.max_stepz'",
        ),
        ("evaluate.py", ["matrix=nope"], "unknown matrix 'nope'"),
    ],
)
def test_unknown_experiment_or_option_exits_2_with_the_valid_names(tmp_path, script, args, expected):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, script, *args, f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {expected}") and "Traceback" not in proc.stderr
    valid = {"experiment": "demo, efficacy_real", "trainer": "max_steps", "matrix": "demo, heldout, judged, medical"}
    assert any(v in proc.stderr for v in valid.values())
