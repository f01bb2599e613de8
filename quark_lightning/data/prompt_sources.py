"""Where prompt rows come from, one reader per kind of source; `datamodule.load_prompt_records` dispatches.

    jsonl          a local .jsonl / .json file: the strict line-numbered reader (schema.read_jsonl)
    parquet        a local .parquet file
    dataset_dir    a local directory written by Dataset.save_to_disk / DatasetDict.save_to_disk
    shard_folder   a local folder of .jsonl / .parquet shards: every shard, in name order
    hub            a hub dataset name (needs network; HF_HUB_OFFLINE=1 refuses it)

`data.subset` is a hub dataset's configuration, or for a local directory the subfolder to read;
`data.split` the split of a hub dataset or of a DatasetDict directory. Each reader returns `Rows` (one per
file or split) of (line or row number, row). Arrow fills a field a row does not have with null, so Arrow
rows lose their null-valued keys (`drop_nulls`, at every depth): a row loads from Parquet or a dataset
exactly as from JSONL. `data.columns` maps our field names to the dataset's columns (`column_mapping.map_columns`);
then every row is validated (schema.validate_records), and ids must be unique across shards too.

Errors: `FILE:LINE: ...` for JSONL, `FILE row:N: ...` for Arrow rows, `FILE: ...` for an unreadable file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from quark_lightning.data.schema import (
    DataValidationError,
    PromptRecord,
    location,
    read_jsonl,
    validate_records,
)
from quark_lightning.infra.errors import ConfigError

JSONL_SUFFIXES = (".jsonl", ".json")
SHARD_SUFFIXES = (".jsonl", ".parquet")
DATASET_DIR_MARKERS = ("dataset_dict.json", "state.json")  # written by DatasetDict / Dataset.save_to_disk


@dataclass
class Rows:
    """The rows of one file or split: `name` names it in messages; Arrow rows are numbered `row:N`."""

    name: str
    rows: list[tuple[int, Any]]
    columns: list[str]
    arrow: bool = False

    @property
    def source(self) -> str:  # the prefix of `SOURCE:N` in a row's message
        return f"{self.name} row" if self.arrow else self.name


# ---------------------------------------------------------------------------------------- helpers


def drop_nulls(value: Any) -> Any:
    """`value` without the null-valued keys of its objects, at every depth (list items stay as they are:
    a null list item is data, a null key is Arrow's filler for a field the row does not have)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def arrow_rows(name: str, table_rows: list[dict[str, Any]], columns: Iterable[str]) -> Rows:
    """Rows read from Arrow (Parquet, a datasets Dataset), numbered from 1, null-filled keys dropped."""
    return Rows(name, [(i + 1, drop_nulls(r)) for i, r in enumerate(table_rows)], list(columns), arrow=True)


def jsonl_columns(rows: list[tuple[int, Any]]) -> list[str]:
    """The keys of a JSONL file's objects (its columns), in first-seen order."""
    seen: dict[str, None] = {}
    for _, row in rows:
        if isinstance(row, dict):
            seen.update(dict.fromkeys(row))
    return list(seen)


def unreadable(path: str, err: Exception, what: str, fix: str) -> DataValidationError:
    return DataValidationError([f"{path}: not a readable {what} ({type(err).__name__}: {err}); {fix}"])


def listing(names: Iterable[str], limit: int = 20) -> str:
    names = sorted(names)
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "(none)"


# ---------------------------------------------------------------------------------------- readers


def read_jsonl_file(path: str) -> list[Rows]:
    """A .jsonl / .json file, one JSON object a line (errors say FILE:LINE)."""
    if not os.path.exists(path):
        raise DataValidationError([f"{path}: file not found (set data.path to an existing JSONL file)"])
    try:
        rows = read_jsonl(path)
    except OSError as err:  # e.g. no permission to read it
        raise unreadable(path, err, "JSONL file", "check the file's permissions") from err
    return [Rows(path, rows, jsonl_columns(rows))]


def read_parquet_file(path: str) -> list[Rows]:
    """A .parquet file (pyarrow; a pandas index stored as a column is left out)."""
    if not os.path.exists(path):
        raise DataValidationError([f"{path}: file not found (set data.path to an existing Parquet file)"])
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        columns = [c for c in table.column_names if not c.startswith("__index_level_")]
        table_rows = table.select(columns).to_pylist()
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise unreadable(
            path, err, "Parquet file", "write it with pandas.DataFrame.to_parquet or use JSONL"
        ) from err
    return [arrow_rows(path, table_rows, columns)]


def damaged_file(directory: str) -> str | None:
    """The first .json / .arrow file under a save_to_disk directory that does not read, if any."""
    import pyarrow as pa

    for root, _, files in sorted(os.walk(directory)):
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                if name.endswith(".json"):
                    with open(path, encoding="utf-8") as fh:
                        json.load(fh)
                elif name.endswith(".arrow"):
                    with pa.memory_map(path) as source:
                        pa.ipc.open_stream(source).read_all()
            except (OSError, ValueError):
                return path
    return None


def pick_split(dataset_dict: Mapping[str, Any], split: str, name: str) -> Any:
    if split not in dataset_dict:
        raise DataValidationError(
            [
                f"{name}: no split {split!r}; its splits are {listing(dataset_dict)}. "
                "Fix: set data.split to one of them"
            ]
        )
    return dataset_dict[split]


def read_dataset_dir(path: str, split: str = "train") -> list[Rows]:
    """A directory written by Dataset.save_to_disk, or DatasetDict.save_to_disk (then `split` is read)."""
    from datasets import DatasetDict, load_from_disk

    def damaged(err: Exception) -> DataValidationError:
        bad = damaged_file(path) or path
        return unreadable(bad, err, "file of a saved dataset", "save the dataset again with save_to_disk")

    try:
        loaded = load_from_disk(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise damaged(err) from err
    name = path
    if isinstance(loaded, DatasetDict):
        name = f"{path}[{split}]"
        loaded = pick_split(loaded, split, path)
    try:
        return [arrow_rows(name, loaded.to_list(), loaded.column_names)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise damaged(err) from err


def read_shard_folder(path: str) -> list[Rows]:
    """Every .jsonl and .parquet file of a folder, in name order (JSONL shards keep FILE:LINE)."""
    names = sorted(n for n in os.listdir(path) if n.endswith(SHARD_SUFFIXES) and not n.startswith("."))
    if not names:
        folders = [n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n))]
        raise DataValidationError(
            [
                f"{path}: no .jsonl or .parquet files in this folder, and it is not a dataset saved with "
                f"save_to_disk (no {' or '.join(DATASET_DIR_MARKERS)}); its subfolders: {listing(folders)}. "
                "Fix: point data.path at the folder holding the shards, or set data.subset to a subfolder"
            ]
        )
    rows: list[Rows] = []
    for name in names:
        shard = os.path.join(path, name)
        rows += read_jsonl_file(shard) if name.endswith(".jsonl") else read_parquet_file(shard)
    return rows


def read_hub(name: str, subset: str | None = None, split: str = "train") -> list[Rows]:
    """A hub dataset (`datasets.load_dataset(name, subset, split=split)`); refused with HF_HUB_OFFLINE=1."""
    if name.startswith(("/", "./", "../", "~")):
        raise DataValidationError(
            [f"{name}: no such file or directory (set data.path to a local file, folder or hub dataset name)"]
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataValidationError(
            [f"{name}: not a local file or folder, and HF_HUB_OFFLINE=1 forbids loading it as a hub dataset"]
        )
    from datasets import load_dataset

    label = f"{name}[{subset}/{split}]" if subset else f"{name}[{split}]"
    try:
        hub = load_dataset(name, subset, split=split)
    except (OSError, ValueError) as err:  # not found, no such configuration (data.subset) or split
        raise DataValidationError(
            [
                f"{label}: could not be loaded from the hub ({type(err).__name__}: {err}). "
                "Fix: check data.path, data.subset and data.split"
            ]
        ) from err
    return [arrow_rows(label, hub.to_list(), hub.column_names)]


# ---------------------------------------------------------------------------------------- dispatch


def source_kind(path: str) -> str:
    """jsonl | parquet | dataset_dir | shard_folder | hub (see the module docstring)."""
    if os.path.isdir(path):  # checked first: Spark writes a "table.parquet" folder of part files
        markers = any(os.path.isfile(os.path.join(path, m)) for m in DATASET_DIR_MARKERS)
        return "dataset_dir" if markers else "shard_folder"
    if path.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if path.endswith(".parquet"):
        return "parquet"
    if os.path.exists(path):
        raise DataValidationError(
            [
                f"{path}: unsupported file type; use .jsonl, .json or .parquet, a folder of such shards, "
                "or a dataset directory written by save_to_disk"
            ]
        )
    return "hub"


def local_subset(path: str, subset: str | None) -> str:
    """The folder to read: `path`, or its subfolder `subset` (a local dataset's configuration)."""
    if not subset:
        return path
    if not os.path.isdir(path):
        raise ConfigError(
            f"data.subset: {subset!r} is set, but data.path {path!r} is a single file (a subset is a "
            "subfolder of a local dataset directory, or a hub dataset's configuration). Fix: data.subset=null"
        )
    if source_kind(path) == "dataset_dir":
        raise ConfigError(
            f"data.subset: {subset!r} is set, but {path!r} is one dataset saved with save_to_disk, which has no "
            "subsets (a DatasetDict's parts are splits: data.split). Fix: data.subset=null"
        )
    folder = os.path.join(path, subset)
    if not os.path.isdir(folder):
        folders = [n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n))]
        raise DataValidationError(
            [
                f"{path}: no subfolder {subset!r} (data.subset); its subfolders are {listing(folders)}. "
                "Fix: set data.subset to one of them, or data.subset=null"
            ]
        )
    return folder


READERS: dict[str, Callable[[str, str], list[Rows]]] = {
    "jsonl": lambda path, split: read_jsonl_file(path),
    "parquet": lambda path, split: read_parquet_file(path),
    "dataset_dir": read_dataset_dir,
    "shard_folder": lambda path, split: read_shard_folder(path),
}


def read_source(path: str, subset: str | None = None, split: str = "train") -> list[Rows]:
    """The rows of `path` (a local file, folder, or hub dataset name), one `Rows` per file or split."""
    if source_kind(path) == "hub":
        return read_hub(path, subset, split)
    folder = local_subset(path, subset)
    return READERS[source_kind(folder)](folder, split)


# ---------------------------------------------------------------------------------------- data.columns


# ---------------------------------------------------------------------------------------- validation


def validate_parts(parts: list[Rows], dataset: str, require_reference: bool = False) -> list[PromptRecord]:
    """Validate every file or split (schema.validate_records); ids must be unique across them too."""
    if len(parts) == 1:
        return validate_records(parts[0].rows, parts[0].source, require_reference)
    records: list[PromptRecord] = []
    errors: list[str] = []
    for part in parts:
        if not part.rows:
            continue  # an empty shard adds nothing
        try:
            records += validate_records(part.rows, part.source, require_reference)
        except DataValidationError as err:
            errors += err.errors
    first: dict[str, PromptRecord] = {}
    for record in records:
        if record["id"] in first:
            errors.append(
                f"{location(record)}: field 'id': {record['id']!r} already used at "
                f"{location(first[record['id']])}; ids must be unique across the files"
            )
        first.setdefault(record["id"], record)
    if errors:
        raise DataValidationError(errors)
    if not records:
        raise DataValidationError([f"{dataset}: no prompts found; every file in it is empty"])
    return records
