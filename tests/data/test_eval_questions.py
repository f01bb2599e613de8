"""The bundled held-out evaluation questions (data/eval_questions.py, assets/eval_questions.jsonl): valid,
balanced, unseen in training, with references that pass their own rubric and triage, and refused by every
training path."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from quark_lightning.data import ASSETS, BUNDLED_PROMPTS
from quark_lightning.data.canary import EVAL_ID_PREFIX, refuse_evaluation_data
from quark_lightning.data.datamodule import load_prompt_records
from quark_lightning.data.eval_questions import EVAL_QUESTIONS, load_eval_questions
from quark_lightning.data.schema import DataValidationError
from quark_lightning.scorers.rubric import RubricScorer
from quark_lightning.scorers.triage import directs_to_emergency_care
from tests.conftest import write_jsonl

KEYS = {"id", "area", "messages", "reference", "rubric", "red_flags", "facts"}
TRAINING_FILES = ("medical_prompts.jsonl", "preference_pairs.jsonl", "online_feedback.jsonl")
MAX_REFERENCE_WORDS = 70
NEAR_DUPLICATE = 0.5  # word-set Jaccard at or above which a question counts as a training question's twin


@pytest.fixture(scope="module")
def questions():
    return load_eval_questions()


@pytest.fixture(scope="module")
def training_rows():
    rows = []
    for name in TRAINING_FILES:
        with open(ASSETS / name, encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def red_flag(record) -> bool:
    return bool(record["red_flags"])


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def test_the_file_validates_with_the_projects_loader(questions):
    loaded = load_prompt_records(str(EVAL_QUESTIONS), require_reference=True)
    assert [r["id"] for r in loaded] == [r["id"] for r in questions]
    areas = {r["area"] for r in load_prompt_records(str(BUNDLED_PROMPTS))}
    for r in questions:
        assert set(r) == KEYS, r["id"]
        assert r["area"] in areas, r["id"]
        assert [m["role"] for m in r["messages"]] == ["user"], r["id"]
        assert r["facts"] == [], r["id"]
        assert r["red_flags"] == [] or all(f.strip() for f in r["red_flags"]), r["id"]
    assert EVAL_QUESTIONS.read_bytes().isascii()


def test_counts_per_kind_and_area(questions):
    kinds = Counter(red_flag(r) for r in questions)
    assert kinds[True] >= 32 and kinds[False] >= 32, kinds
    areas = {r["area"] for r in load_prompt_records(str(BUNDLED_PROMPTS))}
    per_area = Counter((r["area"], red_flag(r)) for r in questions)
    for area in areas:  # every training area is covered, by both kinds
        assert per_area[(area, True)] >= 3 and per_area[(area, False)] >= 3, (area, per_area)


def test_ids_are_marked_and_never_training_ids(questions, training_rows):
    ids = [r["id"] for r in questions]
    assert len(set(ids)) == len(ids)
    for r in questions:
        assert re.fullmatch(rf"{EVAL_ID_PREFIX}{r['area']}-\d\d", r["id"]), r["id"]
    assert not set(ids) & {row.get("id") for row in training_rows}
    assert not [row["id"] for row in training_rows if str(row.get("id", "")).startswith(EVAL_ID_PREFIX)]


def test_no_question_is_a_near_duplicate_of_a_training_question(questions, training_rows):
    seen = {row["messages"][-1]["content"] for row in training_rows}
    assert len(seen) >= 150
    train = [(q, words(q)) for q in seen]
    for r in questions:
        mine = words(r["messages"][-1]["content"])
        score, closest = max((len(mine & w) / len(mine | w), q) for q, w in train)
        assert score < NEAR_DUPLICATE, (r["id"], round(score, 2), closest)


def test_references_are_short_and_triage_correctly(questions):
    for r in questions:
        reference = r["reference"]
        assert len(reference.split()) <= MAX_REFERENCE_WORDS, (r["id"], len(reference.split()))
        # red flag: an unconditional direction to emergency care; routine: none (an "If ..." safety net is fine)
        assert directs_to_emergency_care(reference) == red_flag(r), (r["id"], r["red_flags"])


def test_rubrics_compile_and_the_reference_meets_them(questions):
    for r in questions:
        rubric = r["rubric"]
        assert 2 <= len(rubric) <= 4, r["id"]
        types = Counter(item["type"] for item in rubric)
        assert types["essential"] >= 1 and types["pitfall"] >= 1, (r["id"], types)
        assert set(types) <= {"essential", "important", "pitfall"}, (r["id"], types)
        for item in rubric:
            assert item["any"] and item["text"].strip(), (r["id"], item["id"])
            for pattern in item["any"]:
                re.compile(pattern)  # the schema already compiled them with the scorers' `regex` engine
    outcomes = RubricScorer(matcher="regex").outcomes(questions, [r["reference"] for r in questions])
    for r, items in zip(questions, outcomes, strict=True):
        for item, met in items:
            if item["type"] == "pitfall":
                assert met is False, (r["id"], item["id"], "the reference hits its own pitfall")
            else:
                assert met is True, (r["id"], item["id"], "the reference misses its own item")
    scores = RubricScorer().score(questions, [r["reference"] for r in questions]).scores
    assert [float(s) for s in scores] == [1.0] * len(questions)


# ----------------------------------------------------------------------------------- never trained on


def test_the_guard_refuses_an_eval_row_naming_file_line_and_id(questions):
    with pytest.raises(DataValidationError) as err:
        refuse_evaluation_data(questions, "training prompts (data.path=x)")
    (message,) = err.value.errors
    assert message.startswith(f"{EVAL_QUESTIONS}:1: field 'id': 'eval-cardiology-01' starts with 'eval-'")
    assert f"{len(questions)} such row(s) in the training prompts (data.path=x)" in message
    assert "never be trained on" in message and "Fix: remove those rows" in message
    assert "eval_questions.jsonl" in message


def test_the_guard_names_a_row_built_in_code_and_reports_canary_and_id_together():
    rows = [
        {"id": "mine-1", "messages": []},
        {"id": "eval-custom-1"},
        {"id": "hb-1", "canary": "healthbench:test-canary-0000"},
    ]
    with pytest.raises(DataValidationError) as err:
        refuse_evaluation_data(iter(rows), "preference pairs (p.jsonl)")
    canary, held_out = err.value.errors
    assert canary.startswith("prompt 'hb-1': field 'canary'")
    assert held_out.startswith("prompt 'eval-custom-1': field 'id'")
    assert "preference pairs (p.jsonl)" in held_out
    refuse_evaluation_data([{"id": "evaluation-1"}, {"id": 7}, {"messages": []}], "prompts")  # none refused


def test_training_paths_refuse_the_file_and_accept_the_bundled_sets(tmp_path):
    from quark_lightning.data.datamodule import PromptDataModule
    from quark_lightning.data.preferences import load_online_feedback, load_preference_pairs
    from quark_lightning.data.sft_sources import prompts_file

    with pytest.raises(DataValidationError, match=rf"{EVAL_QUESTIONS}:1: field 'id'.*training prompts"):
        PromptDataModule(str(EVAL_QUESTIONS)).load()
    with pytest.raises(DataValidationError, match=r"field 'id'.*SFT source prompts_file"):
        prompts_file(str(EVAL_QUESTIONS))
    pair = {"id": "eval-pair-01", "messages": [{"role": "user", "content": "Cold?"}], "response_a": "Rest.",
            "response_b": "Antibiotics.", "preference": "a"}  # fmt: skip
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair])
    named = rf"prompt 'eval-pair-01': field 'id'.*preference pairs \({path}\)"
    with pytest.raises(DataValidationError, match=named):
        load_preference_pairs(path)
    assert PromptDataModule("bundled").load()  # the training sets carry no eval- id
    assert load_preference_pairs("bundled") and load_online_feedback("bundled")


def test_the_loader_refuses_an_unmarked_row(tmp_path, questions):
    rows = [dict(questions[0]), {**questions[1], "id": "card-999"}]
    path = write_jsonl(tmp_path / "eval.jsonl", rows)
    named = rf"{path}:2: field 'id': 'card-999' does not start with 'eval-'"
    with pytest.raises(DataValidationError, match=named):
        load_eval_questions(path)
