"""A `datasets`-backed LightningDataModule for prompts (docs/design.md section 3).

Sources (quark_lightning/data/prompt_sources.py, one reader each): a local `.jsonl` / `.json` file, a local
`.parquet` file, a directory written by `save_to_disk`, a folder of `.jsonl` / `.parquet` shards, or a hub
dataset name (for users with network; `HF_HUB_OFFLINE=1` refuses it with a clear message); `data.subset`,
`data.split` and `data.columns` pick the configuration, the split and the columns. Every row is validated
before training; a bad row stops the run with `FILE:LINE: field ...`. Nested prompt objects (rubrics,
metadata) are kept intact as one JSON column, so any extra keys pass through to the scorers untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from quark_lightning.data import BUNDLED_PROMPTS
from quark_lightning.data.calculators import generate_calculator_prompts
from quark_lightning.data.canary import refuse_evaluation_data
from quark_lightning.data.column_mapping import map_columns
from quark_lightning.data.prompt_sources import read_source, validate_parts
from quark_lightning.data.resumable import ResumableDataLoader, ResumableSampler, ShuffleSampler


def resolve_path(path: str) -> str:
    """`bundled` (or an empty value) names the bundled prompt set; anything else is used as given."""
    return str(BUNDLED_PROMPTS) if path in ("bundled", "", None) else path


def load_prompt_records(
    path: str,
    split: str = "train",
    require_reference: bool = False,
    *,
    subset: str | None = None,
    columns: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Read `path` with the reader of its kind (sources.py), map `columns`, validate every row."""
    path = resolve_path(path)
    parts = read_source(path, subset, split)
    dataset = parts[0].name if len(parts) == 1 else path
    return validate_parts(map_columns(parts, columns, dataset), dataset, require_reference)


def to_dataset(records: list[dict[str, Any]]) -> Dataset:
    return Dataset.from_dict(
        {
            "id": [r["id"] for r in records],
            "area": [r.get("area", "general") for r in records],
            # default=str: an extra Arrow column of dates, decimals or bytes travels as text
            "record": [json.dumps(r, ensure_ascii=False, default=str) for r in records],
        }
    )


class AreaWeightedSampler(ResumableSampler):
    """Draws prompts with per-area sampling weights that may change while an epoch runs (curriculum).

    Weight of prompt i = area_weight[area_i] / (number of prompts of that area) * prompt_weight[id_i], so
    with equal area weights every area is drawn equally often, and a prompt the closed loop singles out
    (its answer failed a gate) is drawn `prompt_weight` times as often as its area peers. Indices are drawn
    lazily, so an update applies from the next draw. Its position inside a pass is saved in checkpoints
    (`ResumableSampler`); the weights are the closed loop's state (it saves and restores them).
    """

    def __init__(self, areas: list[str], seed: int = 0, ids: list[str] | None = None):
        super().__init__(len(areas), torch.Generator().manual_seed(seed))
        self.areas = areas
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(areas))]
        self.counts = {a: areas.count(a) for a in set(areas)}
        self.area_weights = {a: 1.0 for a in self.counts}
        self.prompt_weights: dict[str, float] = {}  # prompt id -> multiplier (absent = 1)

    def set_area_weights(self, weights: dict[str, float]) -> None:
        self.area_weights = {a: float(weights.get(a, self.area_weights[a])) for a in self.counts}

    def set_prompt_weights(self, weights: dict[str, float]) -> None:
        """Per-prompt multipliers (ids not among the training prompts are ignored; 1 = neutral)."""
        known = set(self.ids)
        self.prompt_weights = {i: float(w) for i, w in weights.items() if i in known and w != 1.0}

    def shares(self) -> dict[str, float]:
        total = sum(self.area_weights.values())
        return {a: w / total for a, w in self.area_weights.items()}

    def draw(self, count: int) -> list[int]:  # noqa: ARG002 - one index at a time, with the current weights
        w = torch.tensor(
            [
                self.area_weights[a] / self.counts[a] * self.prompt_weights.get(i, 1.0)
                for a, i in zip(self.areas, self.ids)
            ]
        )
        return [int(torch.multinomial(w, 1, generator=self.generator))]


def collate_prompts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch is a list of prompt objects (the scorers need their rubrics and metadata)."""
    return [json.loads(r["record"]) for r in rows]


def with_system_prompt(record: dict[str, Any], system_prompt: str) -> dict[str, Any]:
    """The record with `system_prompt` as its first message, unless the conversation has its own system one."""
    messages = record["messages"]
    if messages and messages[0].get("role") == "system":
        return record
    return {**record, "messages": [{"role": "system", "content": system_prompt}, *messages]}


class PromptDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str = "bundled",
        prompts_per_step: int = 4,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        split: str = "train",
        num_workers: int = 0,
        require_reference: bool = False,
        calculator_prompts: int = 0,
        calculator_seed: int = 0,
        system_prompt: str | None = None,
        subset: str | None = None,
        columns: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.path = resolve_path(path)
        self.subset = subset
        self.columns = columns
        self.prompts_per_step = prompts_per_step
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.split = split
        self.num_workers = num_workers
        self.require_reference = require_reference
        self.calculator_prompts = calculator_prompts
        self.calculator_seed = calculator_seed
        self.system_prompt = system_prompt
        self.records: list[dict[str, Any]] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.sampler: AreaWeightedSampler | None = None  # set up when a curriculum is used
        self.curriculum = False

    def prepare_data(self) -> None:  # validation happens once, before any training
        self.load()

    def load(self) -> list[dict[str, Any]]:
        if self.records is None:
            records = load_prompt_records(
                self.path, self.split, self.require_reference, subset=self.subset, columns=self.columns
            )
            # the training prompts: GRPO, the warm start, the pipeline's SFT, the closed loop's probes
            refuse_evaluation_data(records, f"training prompts (data.path={self.path})")
            if self.calculator_prompts > 0:  # verifiable questions with exact answers, made on demand
                records += generate_calculator_prompts(self.calculator_prompts, seed=self.calculator_seed)
            if self.system_prompt:
                records = [with_system_prompt(r, self.system_prompt) for r in records]
            self.records = records
        return self.records

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = to_dataset(self.load())
        if self.val_fraction > 0 and len(full) >= 10:
            parts = full.train_test_split(test_size=self.val_fraction, seed=self.split_seed)
            self.train_set, self.val_set = parts["train"], parts["test"]
        else:
            self.train_set, self.val_set = full, full.select([])

    def enable_curriculum(self, seed: int = 0) -> AreaWeightedSampler:
        """Switch from uniform shuffling to area-weighted sampling (the closed loop sets the weights)."""
        self.setup("fit")
        if self.sampler is None:
            self.sampler = AreaWeightedSampler(
                list(self.train_set["area"]), seed, ids=list(self.train_set["id"])
            )
        self.curriculum = True
        return self.sampler

    def train_dataloader(self) -> DataLoader:
        """Curriculum or uniform shuffling; the position inside the epoch is saved in checkpoints."""
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.prompts_per_step,
            sampler=self.sampler if self.curriculum else ShuffleSampler(self.train_set),
            drop_last=True,
            collate_fn=collate_prompts,
            num_workers=self.num_workers,
        )

    def draw_prompts(self, n: int, seed: Any) -> list[dict[str, Any]]:
        """n training prompts drawn uniformly with replacement, seeded by `seed` (any hashable value):
        the extra draws of dynamic sampling, the same on a rerun."""
        import random

        rng = random.Random(repr(seed))
        return collate_prompts([self.train_set[rng.randrange(len(self.train_set))] for _ in range(n)])

    def calibration_records(self) -> list[dict[str, Any]]:
        """Training prompts in a fixed order (the same on every rank), for reference calibration."""
        self.setup("fit")
        return collate_prompts(list(self.train_set))

    def val_records(self) -> list[dict[str, Any]]:
        return collate_prompts(list(self.val_set)) if self.val_set is not None else []
