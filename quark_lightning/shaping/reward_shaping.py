"""RewardShaping: the one owner of the state that turns the matrix's (N, K) scores into advantages.

It holds, as buffers of one nn.Module (so each is in the checkpoint once, under `shaping.`):

    normalizer.{mean, std, count, fitted}      Reference-Frozen Normalization statistics (rfn, rfn_tadw)
    weighting.{weights, ema_score, ema_corr,   TADW weights and their EMA state (rfn_tadw); `prior` is the
               steps, prior, reference_target} static weights `weights` were computed under
    loop_gain                                  the closed loop's per-dimension gain (every aggregator)
    _extra_state = {loop: LoopState}           the closed loop's item-level state: format-rule, rubric-item,
                                               area and prompt weights, mined phrases (loop/loop_state.py)

Config-derived values are not checkpoint state: the static weights, TADW's risk levels and targets come
from the config a run starts with, so a resume after editing a matrix weight uses the new weight (under
rfn_tadw the adapted weights are rebased to it, `TriFactorWeighting.rebase`).

plus the aggregator (a registry entry that knows what it needs, shaping/aggregation.py), the gates, and
which dimensions are length-controlled (shaping/length_neutral.py; a config value, not state).
The weights the step uses are `weights`: TADW's weights when the aggregator adapts them, else the static
weights times the loop gain. The module applies `shape` in its step; the callbacks only drive it through
this interface and keep no copies:

    reward-rescaling callback   calibrate(scores, prompt_ids) / load_statistics(path)   (before RL)
    weighting callback          update_weights(z, raw, prompt_ids)                      (after each step)
    closed-loop callback        set_loop_gain(gain), loop (a LoopState it updates and    (after an evaluation)
                                applies to the scorers and the sampler)

A combination that cannot work is refused when the object is built: an aggregator that needs RFN without
normalization settings, or rfn_tadw without weighting settings (see `RewardShaping.__init__`). A driver
the aggregator needs but that is missing at the start of training (no weighting callback, so the weights
would silently stay static) is refused by `check_drivers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quark_lightning.config.typed import typed
from quark_lightning.infra.errors import ConfigError
from quark_lightning.loop.loop_state import LoopState
from quark_lightning.shaping.aggregation import (
    AggregatedReward,
    AggregationContext,
    aggregate_and_advantages,
    aggregator_spec,
)
from quark_lightning.shaping.calibration import check_statistics
from quark_lightning.shaping.length_neutral import length_controlled
from quark_lightning.shaping.rfn import ReferenceFrozenNormalizer, ReferenceStats, load_statistics
from quark_lightning.shaping.shaping_settings import NormalizationSettings, WeightingSettings
from quark_lightning.shaping.tadw import TADWFactors, TriFactorWeighting

# What drives the state: aggregator property -> the callback that must attach (see check_drivers).
DRIVERS = {"needs_normalizer": "reward_rescaling", "adaptive_weights": "weighting"}


def as_settings(cls: type, value: Any, where: str) -> Any:
    """Settings of `cls` from a mapping (a config node: unknown keys and wrong values refused, config/typed.py)
    or as given."""
    return value if isinstance(value, cls) else typed(cls, value, where)


def dimension_flags(
    setting: Any, names: Sequence[str], key: str = "optimization.normalization.length_decoupled"
) -> list[bool]:
    """A per-dimension option (`length_decoupled`, `length_control`): null, `all`, or dimension names ->
    (K,) flags."""
    if setting in (None, False, [], ()):
        return [False] * len(names)
    if setting == "all" or setting is True:
        return [True] * len(names)
    unknown = sorted(set(setting) - set(names)) if not isinstance(setting, str) else []
    if isinstance(setting, str) or unknown:
        short = key.rsplit(".", 1)[-1]
        raise ConfigError(
            f"{key}: {unknown or setting!r} is not a list of the matrix's dimensions {list(names)}. "
            f"Fix: e.g. {short}='[correctness_macro, online_rm]', all, or null"
        )
    return [n in set(setting) for n in names]


@dataclass
class ShapedReward:
    """One step's shaping: the scalar reward (N,), advantages (N,), normalized scores (N, K) or None."""

    aggregated: AggregatedReward
    advantages: torch.Tensor
    frac_zero_std: torch.Tensor


class RewardShaping(nn.Module):
    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[float],
        risk: Sequence[float],
        targets: Sequence[float | None],
        gates: Sequence = (),
        aggregator: str = "sum",
        normalization: Mapping[str, Any] | NormalizationSettings | None = None,
        weighting: Mapping[str, Any] | WeightingSettings | None = None,
        length_control: Any = None,  # null, `all` or dimension names (shaping/length_neutral.py)
    ):
        super().__init__()
        try:
            self.spec = aggregator_spec(aggregator)
        except KeyError as err:
            raise ConfigError(f"{err.args[0]}. Fix: optimization=rfn_tadw (or sum, gdpo, rfn)") from err
        self.aggregator, self.names, self.gates = aggregator, list(names), list(gates)
        K = len(self.names)
        if self.spec.needs_normalizer and normalization is None:
            raise ConfigError(
                f"optimization.aggregator={aggregator} needs Reference-Frozen Normalization, but "
                "optimization.normalization is null. Fix: use optimization=rfn or optimization=rfn_tadw as a "
                "whole (not just the aggregator key)"
            )
        if self.spec.adaptive_weights and weighting is None:
            raise ConfigError(
                f"optimization.aggregator={aggregator} adapts its weights with TADW, but optimization.weighting "
                "is null. Fix: use optimization=rfn_tadw as a whole, or optimization=rfn for static weights"
            )
        self.normalizer = self.weighting = None
        if self.spec.needs_normalizer:
            norm = as_settings(NormalizationSettings, normalization, "optimization.normalization")
            flags = dimension_flags(norm.length_decoupled, self.names)
            self.normalizer = ReferenceFrozenNormalizer(K, **norm.normalizer_kwargs(), length_decoupled=flags)
        if self.spec.adaptive_weights:
            tadw = as_settings(WeightingSettings, weighting, "optimization.weighting")
            self.weighting = TriFactorWeighting(risk=risk, targets=targets, prior=weights, **tadw.kwargs())
        self.register_buffer("base_weights", torch.tensor([float(w) for w in weights]), persistent=False)
        controlled = dimension_flags(length_control, self.names, "optimization.length_control")
        self.register_buffer("length_control", torch.tensor(controlled, dtype=torch.bool), persistent=False)
        self.register_buffer("loop_gain", torch.ones(K))  # closed loop: > 1 for dimensions failing held-out
        self.loop = LoopState()  # the closed loop's item-level state (saved as this module's extra state)
        self.drivers: set[str] = set()  # callbacks that attached themselves (check_drivers)

    # the loop state travels in the state dict (and so in checkpoints) with the dimensions it is for
    def get_extra_state(self) -> dict:
        return {"dimensions": list(self.names), "loop": self.loop.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.loop = LoopState.from_dict(state.get("loop", {}), where="checkpoint shaping._extra_state")

    @classmethod
    def from_matrix(
        cls, matrix, aggregator: str = "sum", normalization=None, weighting=None, length_control=None
    ) -> RewardShaping:
        dims = matrix.dimensions
        return cls(
            names=matrix.names,
            weights=[d.weight for d in dims],
            risk=[d.risk for d in dims],
            targets=[d.target for d in dims],
            gates=matrix.gates(),
            aggregator=aggregator,
            normalization=normalization,
            weighting=weighting,
            length_control=length_control,
        )

    @classmethod
    def with_defaults(
        cls, matrix, aggregator: str = "sum", normalization: Mapping[str, Any] | None = None
    ) -> RewardShaping:
        """The aggregator with its group's default settings (what `optimization=<aggregator>` gives);
        `normalization` overrides some normalizer settings when the aggregator has one."""
        try:
            spec = aggregator_spec(aggregator)
        except KeyError as err:
            raise ConfigError(f"{err.args[0]}. Fix: optimization=rfn_tadw (or sum, gdpo, rfn)") from err
        return cls.from_matrix(
            matrix,
            aggregator,
            normalization=dict(normalization or {}) if spec.needs_normalizer else None,
            weighting={} if spec.adaptive_weights else None,
        )

    # ---------------------------------------------------------------- what the step uses
    @property
    def weights(self) -> torch.Tensor:
        """(K,) the aggregation weights of the next step."""
        if self.weighting is not None:
            return self.weighting.weights
        return self.base_weights * self.loop_gain

    def shape(
        self,
        scores: torch.Tensor,  # (N, K) raw
        failed: torch.Tensor,  # (N, K) bool: the scorer failed
        prompt_ids: Sequence[str],  # (N,)
        group_size: int,
        scale: str = "group",
        lengths: torch.Tensor | None = None,  # (N,) completion tokens (length control, length-decoupled RFN)
    ) -> ShapedReward:
        """Aggregate with the current weights (the controlled dimensions' length slope removed first),
        apply the gates on the raw scores, then group advantages."""
        ctx = AggregationContext(
            group_size=group_size, prompt_ids=prompt_ids, normalizer=self.normalizer, lengths=lengths
        )
        inputs, raw = scores, None
        if bool(self.length_control.any()):
            if lengths is None:
                raise ValueError("optimization.length_control needs the completions' lengths")
            inputs, raw = length_controlled(scores, lengths, group_size, self.length_control), scores
        agg, adv, frac = aggregate_and_advantages(
            self.aggregator, inputs, self.weights, ctx, scale, self.gates, failed=failed, gate_scores=raw
        )
        return ShapedReward(agg, adv, frac)

    def needs_global_batch(self, scale: str) -> bool:
        """Whether the statistics are over the whole (all-rank) batch: gather the scores first."""
        return scale == "batch" or self.spec.batch_statistics or bool(self.length_control.any())

    # ---------------------------------------------------------------- driven by the callbacks
    def attach(self, driver: str) -> None:
        """A callback announces it drives this object (`reward_rescaling`, `weighting`)."""
        self.drivers.add(driver)

    def check_drivers(self) -> None:
        """Refuse to train when a callback the aggregator needs is missing (never a silent downgrade)."""
        for prop, driver in DRIVERS.items():
            if getattr(self.spec, prop) and driver not in self.drivers:
                raise ConfigError(
                    f"optimization.aggregator={self.aggregator} needs the {driver} callback, which this "
                    f"trainer does not have. Fix: build the trainer with quark_lightning.cli.run.build_callbacks "
                    f"(python train.py does), or add callbacks/{driver}.py's callback yourself"
                )

    @property
    def calibrated(self) -> bool:
        return self.normalizer is not None and bool(self.normalizer.fitted)

    def calibrate(
        self,
        scores: torch.Tensor,
        prompt_ids: Sequence[str] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> ReferenceStats:
        """Freeze the RFN statistics from the reference's raw scores (M, K) and, for length-decoupled
        dimensions, their completion lengths (M,), gathered over ranks."""
        return self.normalizer.fit(scores, prompt_ids, lengths)

    def load_statistics(self, path: str) -> None:
        """Load saved RFN statistics; damaged files are refused first, naming the file and the fix."""
        check_statistics(path)
        load_statistics(self.normalizer, self.names, path)

    def target_z(self, prompt_ids: Sequence[str] | None = None) -> torch.Tensor:
        """(K,) the dimensions' targets in RFN units: the same map as the scores (anchors, clip), averaged
        over the batch's prompts under per-prompt anchors; NaN for a dimension without a target."""
        targets = (
            self.weighting.targets
            if self.weighting is not None
            else torch.full((len(self.names),), float("nan"))
        )
        n = len(prompt_ids) if prompt_ids is not None else 1
        z = self.normalizer(targets.unsqueeze(0).expand(n, -1), prompt_ids)  # (n, K)
        return z.mean(0)

    @torch.no_grad()
    def initialize_weights(
        self,
        scores: torch.Tensor,
        prompt_ids: Sequence[str],
        group_size: int,
        reference_scores: torch.Tensor | None = None,
        reference_ids: Sequence[str] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> TADWFactors | None:
        """Start TADW from the calibration batch: the reference policy's raw scores (M, K) in groups of
        `group_size`, and the raw scores (P, K) of the prompts' expert reference answers (the target of
        a dimension without one). No-op without TADW."""
        if self.weighting is None:
            return None
        z = self.normalizer(scores, prompt_ids, lengths)
        ref_z = self.normalizer(reference_scores, reference_ids) if reference_scores is not None else None
        return self.weighting.initialize(z, scores, group_size, self.target_z(prompt_ids), ref_z)

    @torch.no_grad()
    def update_weights(
        self,
        z: torch.Tensor,
        raw: torch.Tensor,
        prompt_ids: Sequence[str] | None = None,
        group_size: int | None = None,
    ) -> TADWFactors:
        """One TADW step from the (gathered) batch's normalized z (N, K) and raw (N, K) scores, in groups
        of `group_size` contiguous rows."""
        return self.weighting.update(
            z, raw, self.target_z(prompt_ids), gain=self.loop_gain, group_size=group_size
        )

    def set_loop_gain(self, gain: torch.Tensor) -> None:
        """The closed loop's per-dimension gain (K,): multiplies the static weights, or TADW's product."""
        self.loop_gain.copy_(gain.to(self.loop_gain))
