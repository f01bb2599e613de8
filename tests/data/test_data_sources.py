"""Bring your own data (issue 23, item 5): every kind of source loads the rows JSONL loads.

The same valid rows written as JSONL, Parquet, a `save_to_disk` directory and a folder of shards load to
the same records (after dropping the keys Arrow fills with null where a row has no such field); a local
dataset directory's subset and split, `data.columns` mapping (and its errors), a damaged file in a
directory, ids unique across shards, and the hub reader's arguments. Offline, seconds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import datasets
import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quark_lightning.cli.entry import run_or_exit
from quark_lightning.cli.run import build_datamodule, run
from quark_lightning.config.validate import validate_config
from quark_lightning.data.datamodule import PromptDataModule, load_prompt_records
from quark_lightning.data.prompt_sources import drop_nulls
from quark_lightning.data.schema import RUBRIC_TYPES, DataValidationError
from quark_lightning.infra.errors import ConfigError
from tests.conftest import REPO, write_jsonl
from tests.data.test_fuzz_inputs import PROMPT

datasets.disable_progress_bars()
FIXTURES = Path(REPO) / "tests" / "fixtures" / "unusual"
# extra_keys.jsonl is left out: its `meta.nested.deep` mixes numbers and objects in one list, which no
# Arrow column can hold (such a file can only be JSONL).
ARROW_FIXTURES = ["crlf_and_blank_lines", "empty_answers", "non_latin", "system_and_multi_turn"]


# ---------------------------------------------------------------------------------------- writers


def columns_of(rows: list[dict]) -> dict[str, list]:
    """Column -> values, over the keys of every row (Dataset.from_list would keep only the first row's)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


def as_dataset(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns_of(rows))


def write_all_ways(rows: list[dict], folder: Path) -> dict[str, str]:
    """The rows as JSONL, Parquet, a save_to_disk directory, and a folder of a JSONL and a Parquet shard."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": write_jsonl(folder / "p.jsonl", rows)}
    as_dataset(rows).to_parquet(str(folder / "p.parquet"))
    paths["parquet"] = str(folder / "p.parquet")
    as_dataset(rows).save_to_disk(str(folder / "saved"))
    paths["save_to_disk"] = str(folder / "saved")
    shards = folder / "shards"
    shards.mkdir()
    half = max(1, len(rows) // 2)
    write_jsonl(shards / "part-0.jsonl", rows[:half])
    if rows[half:]:
        as_dataset(rows[half:]).to_parquet(str(shards / "part-1.parquet"))
    paths["shards"] = str(shards)
    return paths


def plain(records) -> list[dict]:
    return [drop_nulls(dict(r)) for r in records]


def assert_loads_like_jsonl(rows: list[dict], folder: Path) -> None:
    paths = write_all_ways(rows, folder)
    expected = plain(load_prompt_records(paths.pop("jsonl")))
    for kind, path in paths.items():
        assert plain(load_prompt_records(path)) == expected, kind


# ---------------------------------------------------------------------------------------- strategies

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20).filter(
    str.strip
)
PATTERNS = [r"\bwater\b", "fluids?", "(?<!no )rest", "休息", "chest pain"]


@st.composite
def rubric_item(draw, index: int) -> dict:
    item = {"id": f"e{index}", "type": draw(st.sampled_from(RUBRIC_TYPES)), "text": draw(TEXT)}
    if draw(st.booleans()):
        item["any"] = draw(st.lists(st.sampled_from(PATTERNS), max_size=3))
    if draw(st.booleans()):  # the field whose absence Arrow fills with null
        item["points"] = draw(st.integers(1, 5) | st.floats(0.5, 10.0))
    return item


@st.composite
def prompt_row(draw, index: int) -> dict:
    """A valid prompt (docs/design.md section 3) with optional fields present or not, each always of one
    type (an Arrow column has one type)."""
    messages = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    messages.append({"role": "user", "content": draw(TEXT)})
    row = {"id": f"r-{index}", "messages": messages}
    if draw(st.booleans()):
        row["area"] = draw(st.sampled_from(["cardiology", "pediatrics", "general"]))
    if draw(st.booleans()):
        row["reference"] = draw(st.text(max_size=30))
    if draw(st.booleans()):
        row["rubric"] = [draw(rubric_item(i)) for i in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):
        row["red_flags"] = draw(st.lists(TEXT, max_size=2))
    if draw(st.booleans()):  # extra keys pass through; nested ones may be absent too
        extra = {"source": draw(TEXT)}
        if draw(st.booleans()):
            extra["tags"] = draw(st.lists(TEXT, max_size=2))
        row["meta"] = extra
    return row


ROWS = st.integers(1, 5).flatmap(lambda n: st.tuples(*[prompt_row(i) for i in range(n)]).map(list))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=ROWS)
def test_jsonl_parquet_saved_dataset_and_shards_load_the_same_records(rows):
    with tempfile.TemporaryDirectory() as tmp:
        assert_loads_like_jsonl(rows, Path(tmp))


@pytest.mark.parametrize("name", ARROW_FIXTURES)
def test_unusual_fixture_files_load_the_same_from_every_source(name, tmp_path):
    path = FIXTURES / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert_loads_like_jsonl(rows, tmp_path)


def test_a_missing_optional_field_is_not_a_null_from_parquet(tmp_path):
    """Issue 23 item 5.1: a rubric item without `points` and a row without `red_flags` (Arrow: null)."""
    second = {"id": "p-2", "messages": [{"role": "user", "content": "Chest pain?"}], "red_flags": ["x"]}
    first = {
        **PROMPT,
        "rubric": [
            *PROMPT["rubric"],
            {"id": "e2", "type": "pitfall", "text": "t", "any": ["x"], "points": 2},
        ],
    }
    del first["red_flags"]
    path = str(tmp_path / "p.parquet")
    as_dataset([first, second]).to_parquet(path)
    records = load_prompt_records(path)
    assert "points" not in records[0]["rubric"][0] and records[0]["rubric"][1]["points"] == 2
    assert "red_flags" not in records[0] and "rubric" not in records[1]


def test_a_row_jsonl_refuses_is_refused_from_parquet_too(tmp_path):
    bad = {**PROMPT, "rubric": [{"id": "e1", "type": "nice-to-have", "any": ["x"]}]}
    paths = write_all_ways([PROMPT | {"id": "ok"}, bad], tmp_path)
    for kind, pattern in [
        ("jsonl", r"p\.jsonl:2: field 'rubric\[0\]\.type'"),
        ("parquet", r"p\.parquet row:2: field 'rubric\[0\]\.type'"),
        ("save_to_disk", r"saved row:2: field 'rubric\[0\]\.type'"),
        ("shards", r"part-1\.parquet row:1: field 'rubric\[0\]\.type'"),
    ]:
        with pytest.raises(DataValidationError, match=pattern):
            load_prompt_records(paths[kind])


# ---------------------------------------------------------------------------------------- directories


def test_shard_folder_errors_name_the_file_and_line(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "a.jsonl", [PROMPT])
    write_jsonl(shards / "b.jsonl", [{**PROMPT, "id": "p-2"}, '{"id": "x", "messages": ['])
    with pytest.raises(DataValidationError, match=r"b\.jsonl:2: invalid JSON"):
        load_prompt_records(str(shards))
    (shards / "b.jsonl").unlink()
    write_jsonl(shards / "c.jsonl", [{**PROMPT, "id": "p-3"}, PROMPT])  # p-1 again, in another shard
    with pytest.raises(
        DataValidationError, match=r"c\.jsonl:2: field 'id': 'p-1' already used at .*a\.jsonl:1"
    ):
        load_prompt_records(str(shards))
    (shards / "c.jsonl").write_text("")  # an empty shard adds nothing
    (shards / "README.md").write_text("not a shard")  # other files are not read
    assert [r["id"] for r in load_prompt_records(str(shards))] == ["p-1"]
    (shards / "d.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataValidationError, match=r"d\.parquet: not a readable Parquet file"):
        load_prompt_records(str(shards))


def test_a_damaged_saved_dataset_names_the_file(tmp_path):
    saved = tmp_path / "saved"
    as_dataset([PROMPT]).save_to_disk(str(saved))
    arrow = next(saved.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(DataValidationError, match=rf"{arrow.name}: not a readable file of a saved dataset"):
        load_prompt_records(str(saved))
    shutil.rmtree(saved)
    as_dataset([PROMPT]).save_to_disk(str(saved))
    (saved / "state.json").write_text("{not json")
    with pytest.raises(DataValidationError, match=r"state\.json: not a readable file of a saved dataset"):
        load_prompt_records(str(saved))


def test_empty_folder_says_what_it_expects(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataValidationError, match=r"no \.jsonl or \.parquet files.*subfolders: train"):
        load_prompt_records(str(tmp_path))


def saved_subsets(root: Path) -> Path:
    """root/en and root/fr: DatasetDicts (train, test) saved with save_to_disk; ids name subset and split."""
    for subset in ("en", "fr"):
        parts = {
            split: as_dataset([{**PROMPT, "id": f"{subset}-{split}-{i}"} for i in range(2)])
            for split in ("train", "test")
        }
        datasets.DatasetDict(parts).save_to_disk(str(root / subset))
    return root


def test_subset_and_split_of_a_dataset_dict_directory(tmp_path):
    root = saved_subsets(tmp_path / "data")
    assert [r["id"] for r in load_prompt_records(str(root / "en"))] == ["en-train-0", "en-train-1"]
    records = load_prompt_records(str(root), "test", subset="fr")
    assert [r["id"] for r in records] == ["fr-test-0", "fr-test-1"]
    assert records[0].source == f"{root / 'fr'}[test] row"
    with pytest.raises(DataValidationError, match=r"no split 'validation'; its splits are test, train"):
        load_prompt_records(str(root / "en"), "validation")
    with pytest.raises(
        DataValidationError, match=r"no subfolder 'de' \(data.subset\); its subfolders are en, fr"
    ):
        load_prompt_records(str(root), subset="de")
    with pytest.raises(ConfigError, match=r"data.subset: 'test' is set, but .* has no subsets"):
        load_prompt_records(str(root / "en"), subset="test")


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(Path(REPO) / "conf"), version_base=None):
        return compose(config_name="train", overrides=["run_dir=/unused", *overrides])


def test_subset_and_split_through_the_config(tmp_path):
    root = saved_subsets(tmp_path / "data")
    cfg = compose_train([f"data.path={root}", "data.subset=fr", "data.split=test"])
    validate_config(cfg)
    assert [r["id"] for r in build_datamodule(cfg).load()] == ["fr-test-0", "fr-test-1"]
    old = compose_train([f"data.path={root}", "data.subset=en", "data.hub_split=test"])  # the old key
    validate_config(old)
    assert [r["id"] for r in build_datamodule(old).load()] == ["en-test-0", "en-test-1"]
    both = compose_train(["data.split=validation", "data.hub_split=test"])
    with pytest.raises(ConfigError, match=r"data.hub_split: 'test' disagrees with data.split 'validation'"):
        validate_config(both)


# ---------------------------------------------------------------------------------------- data.columns

QA = [
    {"qid": 7, "question": "Is a fever of 38 C dangerous?", "answer": "Usually not; drink fluids.", "n": 1},
    {"qid": 8, "question": "Can I take ibuprofen?", "answer": "Often yes, with food.", "n": 2},
]
QA_COLUMNS = {"prompt": "question", "reference": "answer", "id": "qid"}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "save_to_disk", "shards"])
def test_columns_map_question_answer_qid(kind, tmp_path):
    path = write_all_ways(QA, tmp_path)[kind]
    records = load_prompt_records(path, columns=QA_COLUMNS)
    assert [dict(r) for r in records] == [
        {
            "id": str(row["qid"]),
            "messages": [{"role": "user", "content": row["question"]}],
            "reference": row["answer"],
            "n": row["n"],  # an unmapped column passes through
        }
        for row in QA
    ]


def test_columns_errors_are_clear(tmp_path):
    path = str(tmp_path / "qa.parquet")
    as_dataset(QA).to_parquet(path)
    with pytest.raises(
        DataValidationError,
        match=r"qa\.parquet: column 'answr' \(data.columns.reference\) not found; its columns are answer, n, "
        r"qid, question",
    ):
        load_prompt_records(path, columns={**QA_COLUMNS, "reference": "answr"})
    with pytest.raises(
        ConfigError, match=r"data.columns.questoin: unknown key; Fix: remove it or use one of area"
    ):
        load_prompt_records(path, columns={"questoin": "question"})
    with pytest.raises(ConfigError, match=r"both messages and prompt are mapped"):
        load_prompt_records(path, columns={"prompt": "question", "messages": "question"})
    jsonl = write_jsonl(tmp_path / "qa.jsonl", [QA[0], {**QA[1], "question": ""}])
    with pytest.raises(
        DataValidationError, match=r"qa\.jsonl:2: column 'question' \(data.columns.prompt\): must be"
    ):
        load_prompt_records(jsonl, columns=QA_COLUMNS)


def test_an_integer_id_column_is_refused_unless_mapped(tmp_path):
    path = str(tmp_path / "ids.parquet")
    as_dataset([{**PROMPT, "id": 7}, {**PROMPT, "id": 8}]).to_parquet(path)
    with pytest.raises(
        DataValidationError, match=r"ids\.parquet row:1: field 'id': must be a non-empty string"
    ):
        load_prompt_records(path)  # as from JSONL
    assert [r["id"] for r in load_prompt_records(path, columns={"id": "id"})] == ["7", "8"]


def test_an_extra_date_column_reaches_the_batches(tmp_path):
    import datetime

    path = str(tmp_path / "dated.parquet")
    as_dataset([{**PROMPT, "created": datetime.date(2026, 1, 2)}]).to_parquet(path)
    dm = PromptDataModule(path=path, prompts_per_step=1, val_fraction=0.0)
    dm.setup("fit")
    assert dm.calibration_records()[0]["created"] == "2026-01-02"


def test_an_unknown_columns_key_exits_2_naming_it(tmp_path, capsys):
    cfg = compose_train(["+data.columns.questoin=question", "data.columns.reference=7"])
    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(run, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "data.columns.questoin: unknown key" in err
    assert "data.columns.reference: got 7, expected null or the name of a column" in err


# ---------------------------------------------------------------------------------------- hub


def test_hub_dataset_gets_subset_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        return as_dataset([{"qid": 1, "question": "Is it bad?", "answer": None}])

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = load_prompt_records("org/medqa", "validation", subset="en", columns=QA_COLUMNS)
    assert calls == [("org/medqa", "en", "validation")]
    assert dict(records[0]) == {"id": "1", "messages": [{"role": "user", "content": "Is it bad?"}]}
    assert records[0].source == "org/medqa[en/validation] row"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataValidationError, match="HF_HUB_OFFLINE=1 forbids"):
        load_prompt_records("org/medqa")
