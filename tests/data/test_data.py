"""Prompt data: the bundled set is complete and valid; bad files fail with FILE:LINE: field messages."""

import json

import pytest

from quark_lightning.data.datamodule import PromptDataModule, load_prompt_records
from quark_lightning.data.schema import DataValidationError
from quark_lightning.scorers.rubric import RubricScorer
from quark_lightning.scorers.safety import DangerousAdviceScorer
from quark_lightning.scorers.triage import TriageScorer
from tests.conftest import write_jsonl

GOOD = {
    "id": "a-1",
    "area": "cardiology",
    "messages": [{"role": "user", "content": "Question?"}],
    "reference": "Answer.",
    "rubric": [],
    "red_flags": [],
}


def test_bundled_set_is_large_varied_and_complete(bundled_records):
    assert len(bundled_records) >= 60
    assert len({r["area"] for r in bundled_records}) >= 8
    for r in bundled_records:
        assert r["reference"].strip(), r["id"]
        assert any(i["type"] == "essential" for i in r["rubric"]), r["id"]


def test_bundled_references_pass_their_own_rubric_and_safety(bundled_records):
    """An expert reference must meet every essential item, give no dangerous advice, send its red flags
    to urgent care now (triage) and, without red flags, not send the person to emergency care
    (over_triage)."""
    answers = [r["reference"] for r in bundled_records]
    rubric = RubricScorer().score(bundled_records, answers)
    safety = DangerousAdviceScorer().score(bundled_records, answers)
    triage = TriageScorer("triage").score(bundled_records, answers)
    over = TriageScorer("over_triage").score(bundled_records, answers)
    for i, r in enumerate(bundled_records):
        assert float(rubric.scores[i]) == pytest.approx(1.0), (r["id"], rubric.findings[i])
        assert float(safety.scores[i]) == 1.0, (r["id"], safety.findings[i])
        # exactly one of the two triage dimensions applies
        applies = "triage" if r["red_flags"] else "over_triage"
        result, other = (triage, over) if r["red_flags"] else (over, triage)
        assert float(result.scores[i]) == 1.0, (r["id"], applies, result.findings[i])
        assert other.scores[i].isnan(), r["id"]
    assert sum(bool(r["red_flags"]) for r in bundled_records) >= 30  # about a third of the set


def test_malformed_file_reports_file_line_field(tmp_path):
    bad_role = {**GOOD, "id": "a-2", "messages": [{"role": "doctor", "content": "hi"}]}
    bad_rubric = {
        **GOOD,
        "id": "a-3",
        "rubric": [{"id": "x", "type": "nice-to-have", "text": "t", "any": ["("]}],
    }
    path = write_jsonl(tmp_path / "prompts.jsonl", [GOOD, bad_role, "", bad_rubric, {**GOOD}])
    with pytest.raises(DataValidationError) as err:
        load_prompt_records(path)
    msg = str(err.value)
    assert f"{path}:2: field 'messages[0].role': got 'doctor'" in msg
    assert f"{path}:4: field 'rubric[0].type': got 'nice-to-have'" in msg
    assert f"{path}:4: field 'rubric[0].any[0]': invalid regular expression" in msg
    assert f"{path}:5: field 'id': 'a-1' already used on line 1" in msg


def test_invalid_json_and_missing_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, '{"id": "x", "messages": [', {"area": "x"}])
    with pytest.raises(DataValidationError, match=r"p.jsonl:2: invalid JSON"):
        load_prompt_records(path)
    path = write_jsonl(tmp_path / "q.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataValidationError, match=r"q.jsonl:1: field 'id': must be a non-empty string"):
        load_prompt_records(path)


def test_reference_required_for_warm_start(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{k: v for k, v in GOOD.items() if k != "reference"}])
    assert load_prompt_records(path)  # fine for RL alone
    with pytest.raises(DataValidationError, match=r"p.jsonl:1: field 'reference': required"):
        load_prompt_records(path, require_reference=True)


def test_missing_file_and_extra_keys(tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        load_prompt_records(str(tmp_path / "nope.jsonl"))
    path = write_jsonl(tmp_path / "p.jsonl", [{**GOOD, "hospital_code": "X1", "extra": {"a": 1}}])
    assert load_prompt_records(path)[0]["extra"] == {"a": 1}  # extra keys pass through as metadata


def test_parquet_rows_validate_and_load(tmp_path):
    from datasets import Dataset

    rows = [{**GOOD, "id": f"p-{i}", "rubric": json.dumps([])} for i in range(3)]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(DataValidationError, match=r"p.parquet row:1: field 'rubric': must be a list"):
        load_prompt_records(str(tmp_path / "p.parquet"))
    Dataset.from_list([{**GOOD, "id": f"p-{i}"} for i in range(3)]).to_parquet(str(tmp_path / "ok.parquet"))
    assert [r["id"] for r in load_prompt_records(str(tmp_path / "ok.parquet"))] == ["p-0", "p-1", "p-2"]


def test_datamodule_batches_are_prompt_objects(bundled_records):
    dm = PromptDataModule(path="bundled", prompts_per_step=3, val_fraction=0.1)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 3 and all("messages" in p and "rubric" in p for p in batch)
    assert len(dm.train_set) + len(dm.val_set) == len(bundled_records)
    assert not set(dm.train_set["id"]) & set(dm.val_set["id"])
