"""The `data` group (conf/data/*.yaml) as typed settings: each key's rule declared once (config/typed.py).

`data_settings(node)` builds them from the composed group, refusing unknown keys (with the nearest name)
and every wrong value at once; the run, the evaluation and the config check read the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quark_lightning.config.typed import (
    integer,
    number,
    optional,
    raise_problems,
    setting,
    typed,
    typed_problems,
)
from quark_lightning.data.column_mapping import column_problems


def name(value: Any) -> bool:
    """A non-blank string (a path, a split or subset name)."""
    return isinstance(value, str) and bool(value.strip())


@dataclass(frozen=True)
class DataSettings:
    # where the prompts are (data/prompt_sources.py): bundled, a file, a folder of shards, a saved dataset
    path: str = setting("bundled", name, "'bundled' or a file path")
    subset: str | None = setting(None, optional(name), "null or a subset (configuration) name")
    split: str | None = setting("train", optional(name), "a split name such as train")
    hub_split: str | None = setting(None, optional(name), "null (use data.split instead)")  # split's old name
    # our field -> your dataset's column (null = our name); checked key by key in `cross_key_problems`
    columns: Mapping[str, Any] | None = setting(
        None, lambda v: v is None or isinstance(v, Mapping), "a mapping of our fields to your columns"
    )
    prompts_per_step: int = setting(4, integer(1), "an integer >= 1")
    val_fraction: float = setting(0.1, number(0, 1, high_open=True), "a number in [0, 1)")
    split_seed: int = setting(0, integer(), "an integer")
    num_workers: int = setting(0, integer(0), "an integer >= 0")
    calculator_prompts: int | None = setting(0, optional(integer(0)), "an integer >= 0")
    calculator_seed: int = setting(0, integer(), "an integer")
    system_prompt: str | None = setting(None, optional(lambda v: isinstance(v, str)), "null or a text")

    def cross_key_problems(self) -> list[str]:
        """The old split name against the new one, and the column mapping (data/column_mapping.py)."""
        problems = []
        if self.hub_split is not None and self.split not in (None, "train", self.hub_split):
            problems.append(
                f"data.hub_split: {self.hub_split!r} disagrees with data.split {self.split!r} (hub_split is the "
                "old name of split). Fix: set only data.split"
            )
        return problems + column_problems(self.columns)

    @property
    def source_options(self) -> dict[str, Any]:
        """`load_prompt_records`' subset, split (`hub_split` still counts) and columns."""
        columns = dict(self.columns) if self.columns is not None else None
        return {"subset": self.subset, "split": self.hub_split or self.split or "train", "columns": columns}

    def module_kwargs(self) -> dict[str, Any]:
        """`PromptDataModule`'s arguments (all but `require_reference`, which the warm start decides)."""
        return {
            "path": self.path,
            "prompts_per_step": self.prompts_per_step,
            "val_fraction": self.val_fraction,
            "split_seed": self.split_seed,
            "num_workers": self.num_workers,
            "calculator_prompts": self.calculator_prompts or 0,
            "calculator_seed": self.calculator_seed,
            "system_prompt": self.system_prompt,
            **self.source_options,
        }


def data_problems(values: Mapping[str, Any]) -> list[str]:
    """Everything wrong with a `data` group (a plain mapping): unknown keys, values, then the cross-key rules."""
    problems = typed_problems(DataSettings, values, "data")
    return problems or typed(DataSettings, values, "data").cross_key_problems()


def data_settings(node: Any) -> DataSettings:
    """The `data` group (a DictConfig or a mapping) as settings, or one ConfigError naming every problem."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    raise_problems(data_problems(values), "data")
    return typed(DataSettings, values, "data")
