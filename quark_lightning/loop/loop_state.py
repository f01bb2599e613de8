"""LoopState: the closed loop's item-level reward state. RewardShaping owns it (`shaping.loop`).

The closed-loop callback (callbacks/closed_loop.py) decides; this object holds what it decided and hands it,
from this one place, to the scorers and the sampler that use it:

    to the scorers   rule_weights    format dimension -> rule -> weight inside the format score  (FormatScorer)
                     item_weights    rubric dimension -> prompt id -> item id -> weight           (RubricScorer)
                     loop_patterns   bad-pattern dimension -> phrase -> provenance            (BadPatternScorer)
    to the sampler   area_weights    clinical area -> curriculum weight                   (AreaWeightedSampler)
                     prompt_weights  training prompt id -> sampling multiplier
    to the loop      means           dimension -> held-out mean of each evaluation ("letting go", `patience`)
                     probe_cursor    where the rotation of probed training prompts continues

The held-out evaluation itself scores with the scorers as configured (`suspended`): this state is the
reward the policy trains against, not the yardstick it is measured with. The per-dimension loop gain is
RewardShaping's `loop_gain` buffer. RewardShaping saves this object as its
extra state, so the module's checkpoint defines the reward completely; at the end of training
`reward_state.json` beside the policy holds the same (`write_reward_state`), for `evaluate.py
reward_state=...` and `score.py --reward-state ...`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from quark_lightning.infra.errors import ConfigError
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.online import BadPatternScorer
from quark_lightning.scorers.rubric import RubricScorer

REWARD_STATE_FORMAT = "quark-lightning reward state"
FIELDS = ("rule_weights", "item_weights", "loop_patterns", "area_weights", "prompt_weights", "means")


def scorer_of(matrix, name: str, kind: type):
    """The scorer behind dimension `name` when it is a `kind`, else None."""
    scorer = matrix.dimensions[matrix.names.index(name)].scorer
    return scorer if isinstance(scorer, kind) else None


@dataclass
class LoopState:
    rule_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    item_weights: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    loop_patterns: dict[str, dict[str, dict]] = field(default_factory=dict)
    area_weights: dict[str, float] = field(default_factory=dict)
    prompt_weights: dict[str, float] = field(default_factory=dict)
    means: dict[str, list[float]] = field(default_factory=dict)
    probe_cursor: int = 0

    # ---------------------------------------------------------------- handed out from here
    def apply(self, matrix, sampler=None) -> None:
        """Give every scorer and the sampler their part of the state (a restore, or after an update)."""
        self.apply_to_scorers(matrix)
        self.apply_to_sampler(sampler)

    def apply_to_scorers(self, matrix) -> None:
        for part, kind, setter in (
            (self.rule_weights, FormatScorer, "set_rule_weights"),
            (self.item_weights, RubricScorer, "set_item_weights"),
            (self.loop_patterns, BadPatternScorer, "set_loop_patterns"),
        ):
            for name, value in part.items():
                scorer = scorer_of(matrix, name, kind) if name in matrix.names else None
                if scorer is None:
                    raise ConfigError(
                        f"reward state: dimension {name!r} is not a {kind.__name__} dimension of this matrix "
                        f"(dimensions: {matrix.names}). Fix: use the matrix the run was trained with"
                    )
                getattr(scorer, setter)(value)

    @contextmanager
    def suspended(self, matrix) -> Iterator[None]:
        """The scorers as configured for the duration (every format rule weighs 1, no rubric-item weights,
        no mined phrases), then this state handed back: the closed loop's held-out yardstick, the same at
        every evaluation, so its start and end tables compare answers, not two versions of the reward."""
        LoopState(
            rule_weights={d: dict.fromkeys(w, 1.0) for d, w in self.rule_weights.items()},
            item_weights={d: {} for d in self.item_weights},
            loop_patterns={d: {} for d in self.loop_patterns},
        ).apply_to_scorers(matrix)
        try:
            yield
        finally:
            self.apply_to_scorers(matrix)

    def apply_to_sampler(self, sampler) -> None:
        if sampler is None:
            return
        if self.area_weights:
            sampler.set_area_weights(self.area_weights)
        sampler.set_prompt_weights(self.prompt_weights)

    def record_means(self, metrics: dict[str, Any]) -> None:
        """One evaluation's held-out mean per dimension (what "letting go" compares)."""
        for name, row in metrics["dimensions"].items():
            self.means.setdefault(name, []).append(float(row["mean"]))

    # ---------------------------------------------------------------- saved as plain containers
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any], where: str = "reward state") -> LoopState:
        unknown = sorted(set(state) - {*FIELDS, "probe_cursor"})
        if unknown:
            raise ConfigError(f"{where}: unknown loop-state field(s) {unknown}; expected {[*FIELDS, 'probe_cursor']}")
        for key in FIELDS:
            if not isinstance(state.get(key, {}), dict):
                raise ConfigError(f"{where}: loop.{key} must be a mapping, got {type(state[key]).__name__}")
        return cls(
            rule_weights={d: dict(w) for d, w in state.get("rule_weights", {}).items()},
            item_weights={d: {p: dict(i) for p, i in w.items()} for d, w in state.get("item_weights", {}).items()},
            loop_patterns={d: dict(p) for d, p in state.get("loop_patterns", {}).items()},
            area_weights=dict(state.get("area_weights", {})),
            prompt_weights=dict(state.get("prompt_weights", {})),
            means={d: [float(m) for m in v] for d, v in state.get("means", {}).items()},
            probe_cursor=int(state.get("probe_cursor", 0)),
        )


# -------------------------------------------------------------------- reward_state.json
def write_reward_state(path: str, shaping, step: int) -> str:
    """`reward_state.json`: the aggregation weights, loop gain and loop state a run ended with."""
    state = {
        "format": REWARD_STATE_FORMAT,
        "step": int(step),
        "aggregator": shaping.aggregator,
        "dimensions": list(shaping.names),
        "weights": [float(w) for w in shaping.weights],
        "loop_gain": [float(g) for g in shaping.loop_gain],
        "loop": shaping.loop.to_dict(),
    }
    with open(path, "w") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)
    return path


def read_reward_state(path: str) -> tuple[list[str], LoopState]:
    """(dimension names, loop state) from a run's `reward_state.json` or its Lightning checkpoint (.ckpt)."""
    if not os.path.exists(path):
        raise ConfigError(
            f"reward_state: {path!r} does not exist. Fix: give a run's reward_state.json (beside its policy/) "
            "or its checkpoints/last.ckpt"
        )
    if path.endswith(".ckpt"):
        return _from_checkpoint(path)
    try:
        with open(path) as fh:
            state = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"reward_state: {path!r} is not readable JSON ({err}). Fix: give a run's reward_state.json") from err
    if not isinstance(state, dict) or state.get("format") != REWARD_STATE_FORMAT:
        raise ConfigError(
            f"reward_state: {path!r} is not a reward state file (no \"format\": \"{REWARD_STATE_FORMAT}\"). "
            "Fix: give the reward_state.json a training run wrote beside its policy/"
        )
    return list(state.get("dimensions", [])), LoopState.from_dict(state.get("loop", {}), where=path)


def _from_checkpoint(path: str) -> tuple[list[str], LoopState]:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        extra = ckpt["state_dict"]["shaping._extra_state"]
    except Exception as err:  # noqa: BLE001 - any failure means no reward state in this file
        raise ConfigError(
            f"reward_state: {path!r} holds no reward state (shaping._extra_state): {type(err).__name__}: "
            f"{str(err)[:200]}. Fix: give a checkpoint written by GRPO training, or its reward_state.json"
        ) from err
    return list(extra.get("dimensions", [])), LoopState.from_dict(extra.get("loop", {}), where=path)


def load_reward_state(path: str, matrix) -> LoopState:
    """Read a run's reward state and hand it to `matrix`'s scorers; the matrix must be the run's."""
    names, state = read_reward_state(path)
    if names and names != matrix.names:
        raise ConfigError(
            f"reward_state: {path!r} was trained with dimensions {names}, this matrix has {matrix.names}. "
            "Fix: evaluate with the run's matrix (e.g. matrix=<the run's matrix group>)"
        )
    state.apply_to_scorers(matrix)
    return state
