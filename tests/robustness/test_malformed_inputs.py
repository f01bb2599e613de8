"""Bad input of every user-facing kind stops with a message that says what, where and how to fix it.

The corpus is `tests/fixtures/malformed/`: one file per case, each with one defect (the rest of the
file is valid). The table below maps file -> loader -> the substrings its message must contain; a row
defect must be reported as `FILE:LINE: field 'x'`. Config values go through `validate_config`, and a
few cases run the real `train.py` to check the user sees exit code 2 and no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quark_lightning.cli.score import load_responses
from quark_lightning.config.validate import validate_config
from quark_lightning.data.datamodule import load_prompt_records
from quark_lightning.data.healthbench import load_healthbench
from quark_lightning.data.preferences import load_online_feedback, load_preference_pairs
from quark_lightning.data.references import resolve_within, validate_fact_references
from quark_lightning.data.schema import MAX_TEXT_CHARS, DataValidationError, location
from quark_lightning.infra.errors import ConfigError
from quark_lightning.matrix.alignment_matrix import AlignmentMatrix
from quark_lightning.matrix.build import build_matrix
from quark_lightning.matrix.dimension import Dimension, MatrixConfigError
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.retrieval import load_knowledge_base
from tests.config.test_config import compose_cfg
from tests.conftest import REPO, write_jsonl

MALFORMED = Path(__file__).parents[1] / "fixtures" / "malformed"


def garm_matrix() -> AlignmentMatrix:
    """A matrix with one GARM dimension over the bundled knowledge base (what `facts` refer to)."""
    from quark_lightning.scorers.garm import AssertionScorer

    return AlignmentMatrix([Dimension("correctness_atomic", "fundamental", AssertionScorer())])


def prompts_with_facts_checked(path: str) -> None:
    validate_fact_references(load_prompt_records(path), garm_matrix())


LOADERS: dict[str, Callable[[str], Any]] = {
    "prompts": load_prompt_records,
    "facts": prompts_with_facts_checked,
    "pairs": load_preference_pairs,
    "feedback": load_online_feedback,
    "kb": load_knowledge_base,
    "healthbench": load_healthbench,
    "responses": load_responses,
}

# file, loader, expected substrings ({f} = the file's path)
CASES: list[tuple[str, str, list[str]]] = [
    # ---- prompts: syntax and encoding
    (
        "prompts_invalid_json.jsonl",
        "prompts",
        ["{f}:2: invalid JSON at column", "each line must be one complete JSON object"],
    ),
    (
        "prompts_not_utf8.jsonl",
        "prompts",
        ["{f}:2: not valid UTF-8: byte 0xe8", "save the file as UTF-8"],
    ),
    ("prompts_nan_points.jsonl", "prompts", ["{f}:1: invalid JSON: NaN is not valid JSON"]),
    (
        "prompts_duplicate_key.jsonl",
        "prompts",
        ["{f}:1: invalid JSON: key 'id' appears twice in one object"],
    ),
    ("prompts_not_object.jsonl", "prompts", ["{f}:1: the row must be a JSON object, got list"]),
    ("prompts_empty.jsonl", "prompts", ["{f}: no prompts found; the file is empty"]),
    ("prompts_wrong_extension.csv", "prompts", ["{f}: unsupported file type; use .jsonl, .json or .parquet"]),
    # ---- prompts: fields
    ("prompts_missing_id.jsonl", "prompts", ["{f}:1: field 'id': must be a non-empty string"]),
    (
        "prompts_messages_not_list.jsonl",
        "prompts",
        ["{f}:1: field 'messages': must be a non-empty list", "got 'I have a cough.'"],
    ),
    (
        "prompts_bad_role.jsonl",
        "prompts",
        ["{f}:2: field 'messages[0].role': got 'patient', expected one of system, user, assistant"],
    ),
    (
        "prompts_ends_with_assistant.jsonl",
        "prompts",
        ["{f}:1: field 'messages': the last message must be from the 'user'", "got 'assistant'"],
    ),
    ("prompts_duplicate_id.jsonl", "prompts", ["{f}:2: field 'id': 't-001' already used on line 1"]),
    (
        "prompts_unknown_rubric_type.jsonl",
        "prompts",
        [
            "{f}:1: field 'rubric[0].type': got 'nice-to-have', "
            "expected one of essential, important, highlight, pitfall"
        ],
    ),
    (
        "prompts_bad_regex.jsonl",
        "prompts",
        ["{f}:1: field 'rubric[0].any[0]': invalid regular expression '(rest|fluids'", "escape literal"],
    ),
    (
        "prompts_regex_repeat_too_big.jsonl",
        "prompts",
        [
            "{f}:1: field 'rubric[0].any[0]': invalid regular expression 'rest{{99999999999}}': repeat count too big"
        ],
    ),
    (
        "prompts_bad_points.jsonl",
        "prompts",
        ["{f}:1: field 'rubric[0].points': must be a positive number, got -1"],
    ),
    (
        "prompts_facts_not_list.jsonl",
        "prompts",
        ["{f}:1: field 'facts': must be a list of non-empty strings", "got 'kb-pharm-001'"],
    ),
    (
        "prompts_bad_answer.jsonl",
        "prompts",
        ["{f}:1: field 'answer.value': a number answer needs a numeric value, got 'two'"],
    ),
    (
        "prompts_reference_not_string.jsonl",
        "prompts",
        ["{f}:1: field 'reference': must be a string (the expert answer)"],
    ),
    # ---- prompts: absurd lengths
    (
        "prompts_content_too_long.jsonl",
        "prompts",
        ["{f}:1: field 'messages[0].content': 150,000 characters, more than the limit of 100,000"],
    ),
    (
        "prompts_too_many_messages.jsonl",
        "prompts",
        ["{f}:1: field 'messages': 149 entries, more than the limit of 100"],
    ),
    (
        "prompts_too_many_rubric_items.jsonl",
        "prompts",
        ["{f}:1: field 'rubric': 2,000 entries, more than the limit of 200"],
    ),
    # ---- prompts -> knowledge base (cross-file)
    (
        "prompts_unknown_fact.jsonl",
        "facts",
        [
            "{f}:2: field 'facts[1]': evidence id 'kb-pharm-0001' is not in the knowledge base of matrix "
            "dimension 'correctness_atomic'",
            "did you mean 'kb-pharm-001'?",
        ],
    ),
    # ---- preference pairs
    (
        "pairs_bad_preference.jsonl",
        "pairs",
        ["{f}:1: field 'preference': got 'A', expected one of 'a', 'b', 'tie'"],
    ),
    ("pairs_missing_response.jsonl", "pairs", ["{f}:1: field 'response_b': missing"]),
    (
        "pairs_identical_responses.jsonl",
        "pairs",
        ["{f}:1: field 'preference': got 'a' but response_a and response_b are identical; use 'tie'"],
    ),
    ("pairs_empty.jsonl", "pairs", ["{f}: no preference pairs found; the file is empty"]),
    # ---- online feedback
    (
        "feedback_bad_rating.jsonl",
        "feedback",
        ["{f}:2: field 'rating': got 5, expected 1 (liked) or -1 (disliked)"],
    ),
    (
        "feedback_bad_tags.jsonl",
        "feedback",
        ["{f}:1: field 'tags': must be a list of non-empty strings", "got 'unsafe'"],
    ),
    ("feedback_duplicate_id.jsonl", "feedback", ["{f}:2: field 'id': 'fb-1' already used on line 1"]),
    # ---- evidence knowledge base
    ("kb_duplicate_id.jsonl", "kb", ["{f}:2: field 'id': 'kb-t-001' already used on line 1"]),
    ("kb_bad_unit.jsonl", "kb", ["{f}:1: field 'claims[0].quantity.unit': unknown unit 'tsp'"]),
    ("kb_missing_text.jsonl", "kb", ["{f}:1: field 'text': must be a non-empty string"]),
    ("kb_invalid_json.jsonl", "kb", ["{f}:2: invalid JSON at column 2"]),
    # ---- other loaders
    ("healthbench_no_rubrics.jsonl", "healthbench", ["{f}:1: field 'rubrics': must be a non-empty list"]),
    (
        "responses_missing_response.jsonl",
        "responses",
        ["{f}:1: field 'response': must be a string (the answer to score", "missing"],
    ),
    (
        "responses_response_not_string.jsonl",
        "responses",
        ["{f}:1: field 'response': must be a string", "got {{'text':"],
    ),
    (
        "responses_duplicate_id.jsonl",
        "responses",
        ["{f}:3: field 'id': 'w-1' already used on line 1", "distinct 'response_id' (or 'model')"],
    ),
    (
        "responses_duplicate_response_id.jsonl",
        "responses",
        ["{f}:2: field 'id': 'w-1' already used on line 1 with the same response_id 'r1'"],
    ),
    ("responses_bad_model.jsonl", "responses", ["{f}:1: field 'model': must be a non-empty string"]),
]


def test_every_fixture_is_in_the_table():
    assert sorted(p.name for p in MALFORMED.iterdir()) == sorted(name for name, _, _ in CASES)
    assert len(CASES) >= 20


@pytest.mark.parametrize("name,loader,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_reported(name, loader, expected):
    path = str(MALFORMED / name)
    with pytest.raises(DataValidationError) as err:
        LOADERS[loader](path)
    message = str(err.value)
    for fragment in expected:
        assert fragment.format(f=path) in message, message
    assert len(message) < 5_000  # a huge bad value is never echoed in full


def test_a_message_of_millions_of_characters_is_refused_without_echoing_it(tmp_path):
    huge = "a" * 3_000_000
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "messages": [{"role": "user", "content": huge}]}])
    with pytest.raises(DataValidationError) as err:
        load_prompt_records(path)
    assert f"{path}:1: field 'messages[0].content': 3,000,000 characters" in str(err.value)
    assert f"limit of {MAX_TEXT_CHARS:,}" in str(err.value) and len(str(err.value)) < 1_000


def test_a_byte_order_mark_is_accepted(tmp_path):
    row = '{"id": "x", "messages": [{"role": "user", "content": "Is a cough with fever serious?"}]}\n'
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + row.encode())
    assert load_prompt_records(str(path))[0]["id"] == "x"


def test_loaded_prompts_remember_their_line_and_valid_facts_pass():
    records = load_prompt_records("bundled")
    assert location(records[2]).endswith("medical_prompts.jsonl:3")
    assert location({"id": "calc-1"}) == "prompt 'calc-1'"
    validate_fact_references(records, garm_matrix())  # every bundled fact id is in the bundled KB
    no_kb = AlignmentMatrix([Dimension("format_rules", "format", FormatScorer())])
    validate_fact_references([{"id": "x", "facts": ["nope"]}], no_kb)  # facts unused: nothing to check


# ------------------------------------------------------------------------------------- config values

CONFIG_CASES = [
    (["data.prompts_per_step=0"], "data.prompts_per_step: got 0, expected an integer >= 1"),
    (["data.val_fraction=1.5"], "data.val_fraction: got 1.5, expected a number in [0, 1)"),
    (["rollout.temperature=-1"], "rollout.temperature: got -1, expected a number > 0"),
    (["algorithm.betas=[0.9,1.5]"], "algorithm.betas: got [0.9, 1.5], expected two numbers in [0, 1)"),
    (
        ["matrix.dimensions.safety.weight=-1"],
        "matrix.dimensions.safety.weight: got -1, expected a number >= 0",
    ),
    (["model.trust_remote_code='false'"], "model.trust_remote_code: got 'false', expected true or false"),
    (
        ["model=hf", "model.name_or_path=/nonexistent/model"],
        "model.name_or_path: '/nonexistent/model' does not exist",
    ),
    (
        ["model=hf", "model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct"],
        "HF_HUB_OFFLINE=1 forbids downloading it from the hub",
    ),
    (["model.adapter_path=/nonexistent/adapter"], "model.adapter_path: '/nonexistent/adapter' is not a LoRA"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path: '/nonexistent/last.ckpt' is not an existing local"),
]


@pytest.mark.parametrize("overrides,fragment", CONFIG_CASES, ids=[c[1].split(":")[0] for c in CONFIG_CASES])
def test_config_value_out_of_range_names_the_key_and_fix(overrides, fragment, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg("+experiment=demo", *overrides))
    assert fragment in str(err.value) and "Fix:" in str(err.value)


def test_matrix_with_a_missing_knowledge_base_names_the_dimension():
    garm = (
        "+matrix.dimensions.garm={category: fundamental, weight: 1.0, scorer: "
        "{_target_: quark_lightning.scorers.garm.AssertionScorer, knowledge_base: /nonexistent/kb.jsonl}}"
    )
    with pytest.raises(MatrixConfigError) as err:
        build_matrix(compose_cfg("+experiment=demo", garm).matrix)
    assert "matrix dimension 'garm'" in str(err.value) and "/nonexistent/kb.jsonl" in str(err.value)


def test_matrix_gate_with_an_unknown_mode_is_refused():
    cfg = compose_cfg("+experiment=demo", "+matrix.dimensions.safety.gate={below: 1.0, mode: veto}")
    with pytest.raises(MatrixConfigError, match=r"matrix dimension 'safety': gate.mode 'veto' is not one of"):
        build_matrix(cfg.matrix)


# ------------------------------------------------------------------------------------- safe defaults


def test_data_paths_never_escape_their_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scan.txt").write_text("ok")
    (tmp_path / "secret.txt").write_text("no")
    (tmp_path / "data" / "link.txt").symlink_to(tmp_path / "secret.txt")
    base, where = tmp_path / "data", "rows.jsonl:3: field 'attachment'"
    assert resolve_within(base, "scan.txt", where) == (base / "scan.txt").resolve()
    for bad, fragment in [
        ("../secret.txt", "points outside"),
        ("sub/../../secret.txt", "points outside"),
        ("link.txt", "points outside"),  # a symlink out of the directory is an escape too
        (str(tmp_path / "secret.txt"), "is not a relative path"),
        ("~/secret.txt", "is not a relative path"),
        ("missing.txt", "is not a file"),
    ]:
        with pytest.raises(DataValidationError, match=rf"rows.jsonl:3: field 'attachment': .*{fragment}"):
            resolve_within(base, bad, where)


class _Payload:
    """Unpickling this would create a file: a checkpoint must never run code on load."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_are_loaded_as_tensors_only(tmp_path):
    import torch
    from omegaconf import OmegaConf

    from quark_lightning.evaluation.evaluate_models import load_checkpoint
    from quark_lightning.models.loading import ModelLoadError

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"policy.w": torch.zeros(1)}, "x": _Payload(str(marker))}, ckpt)
    with pytest.raises(ModelLoadError, match=r"as tensors only \(weights_only=True\)"):
        load_checkpoint(str(ckpt), OmegaConf.create({"kind": "tiny"}), [])
    assert not marker.exists()


def test_trust_remote_code_is_off_by_default_and_must_be_a_boolean():
    import inspect

    from quark_lightning.models.loading import ModelLoadError, load_causal_lm, load_tokenizer

    for function in (load_causal_lm, load_tokenizer):
        assert inspect.signature(function).parameters["trust_remote_code"].default is False
    for name in ("hf", "tiny"):
        assert "trust_remote_code: false" in (Path(REPO) / "conf" / "model" / f"{name}.yaml").read_text()
    with pytest.raises(ModelLoadError, match="model.trust_remote_code: got 'false', expected true or false"):
        load_causal_lm("/nonexistent", trust_remote_code="false")


LIBRARY = ["quark_lightning", "callbacks", "benchmarks", "evaluate.py", "train.py"]


def library_sources() -> list[Path]:
    out = []
    for entry in LIBRARY:
        path = Path(REPO) / entry
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def test_no_unsafe_loading_or_eval_in_library_code():
    import re

    unsafe = re.compile(
        r"weights_only\s*=\s*False|(?<![\w.])(eval|exec)\(|pickle\.loads?\(|yaml\.load\(|trust_remote_code\s*=\s*True"
    )
    torch_load = re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)")
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in library_sources()
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if unsafe.search(line) or torch_load.search(line)
    ]
    assert not found, found


# ------------------------------------------------------------------------------------- end to end


def train(tmp_path, *overrides):
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "train.py", "+experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,expected",
    [
        ("prompts_not_utf8.jsonl", "{f}:2: not valid UTF-8: byte 0xe8"),
        ("prompts_too_many_rubric_items.jsonl", "{f}:1: field 'rubric': 2,000 entries"),
    ],
)
def test_train_py_stops_on_bad_data_with_exit_code_2(tmp_path, name, expected):
    path = str(MALFORMED / name)
    proc = train(tmp_path, f"data.path={path}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected.format(f=path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # stopped before any model was built


@pytest.mark.slow
def test_train_py_stops_on_a_missing_model_directory(tmp_path):
    proc = train(tmp_path, "model=hf", "model.name_or_path=/nonexistent/model")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "model.name_or_path: '/nonexistent/model' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_corrupt_parquet_file_is_reported_not_a_pyarrow_traceback(tmp_path):
    bad = tmp_path / "prompts.parquet"
    bad.write_bytes(b"this is not parquet\n")
    with pytest.raises(DataValidationError, match=r"prompts.parquet: not a readable Parquet file"):
        load_prompt_records(str(bad))


# ------------------------------------------------------------------------------------- unusual but valid

UNUSUAL = Path(__file__).parents[1] / "fixtures" / "unusual"


@pytest.mark.parametrize("name", sorted(p.name for p in UNUSUAL.glob("*.jsonl")))
def test_unusual_but_valid_input_is_accepted_and_scored(name):
    """CRLF line endings, trailing blank lines, system messages, multi-turn conversations, non-Latin text,
    extra keys and empty answers are valid input: read as prompts and as responses, and every dimension
    scores every answer (the rubric's non-Latin patterns match non-Latin answers)."""
    from quark_lightning.cli.score import score_records
    from quark_lightning.scorers.rubric import RubricScorer
    from quark_lightning.scorers.safety import DangerousAdviceScorer

    path = str(UNUSUAL / name)
    prompts = load_prompt_records(path)
    records = load_responses(path)
    assert len(prompts) == len(records) >= 2
    matrix = AlignmentMatrix(
        [
            Dimension("format_rules", "format", FormatScorer(min_words=3)),
            Dimension("expert_rubric", "expert", RubricScorer()),
            Dimension("safety", "fundamental", DangerousAdviceScorer()),
        ]
    )
    rows = list(score_records(matrix, records, batch_size=8))
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    for record, row in zip(records, rows):
        assert row["failed"] == [] and row["scores"]["format_rules"] is not None and row["reward"] is not None
        assert (row["scores"]["expert_rubric"] is None) == (not record.get("rubric"))
        if record.get("rubric") and record["response"].strip():
            assert row["scores"]["expert_rubric"] == 1.0, (record["id"], row["findings"])
        assert row["flags"] == ([] if record["response"].strip() else [row["flags"][0]])
