"""DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476): keep only groups whose rewards differ.

A group whose G rewards are all equal has advantage 0 for every completion: it costs a forward and a
backward and teaches nothing. With `algorithm.dynamic_sampling: true` such groups are dropped and more
prompts are drawn (a full batch per draw, as DAPO does) until the batch has `prompts_per_step` groups
with a non-zero reward spread, or `algorithm.dynamic_sampling_max_draws` extra draws were made. If the
cap is reached first, the batch is topped up with dropped groups (their advantage is 0), so every rank
keeps the same batch size (DDP needs it) and the step still runs; `dynamic_sampling/zero_std_groups`
says how many, and is 0 whenever the cap was not reached. Under DDP every rank draws as long as any
rank needs more (the scorers' failure counts are summed across ranks on each draw).

Which groups have zero spread is decided on the reward as the run aggregates it (the same aggregator,
weights and gates as the step; under `gdpo` the batch statistics of this rank's draw), with a
tolerance of 1e-6. Pure helpers on tensors and rollouts, and the two drivers, `refill` (DAPO) and `redraw`
(risk on sampling), which reach the step only through a `Resampler` of callables (a test passes fakes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from quark_lightning.infra.errors import ConfigError
from quark_lightning.matrix.alignment_matrix import MatrixScores
from quark_lightning.rollout.engine import Rollout
from quark_lightning.shaping.aggregation import nanstd

ZERO_STD = 1e-6


def group_has_spread(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) rewards -> (N // G,) bool: the group's rewards are not all equal (NaN rewards are ignored;
    a group with fewer than two non-NaN rewards has no spread)."""
    groups = reward.view(-1, group_size)  # (P, G)
    counts = (~torch.isnan(groups)).sum(1)
    return (nanstd(groups, dim=1) > ZERO_STD) & (counts >= 2)


def group_rows(groups: Sequence[int], group_size: int) -> list[int]:
    return [g * group_size + j for g in groups for j in range(group_size)]


def _pad_cat(tensors: Sequence[torch.Tensor], side: str, value: int = 0) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    out = []
    for t in tensors:
        pad = t.new_full((t.size(0), width - t.size(1)), value)
        out.append(torch.cat([pad, t] if side == "left" else [t, pad], dim=1))
    return torch.cat(out, dim=0)


def select_rollout(parts: Sequence[tuple[Rollout, list[int]]], pad_token_id: int) -> Rollout:
    """Rows `rows` of each rollout, concatenated: prompts left-padded, completions right-padded to the
    widest part (padding sits under mask 0, as the engine's own padding does)."""
    picked = []
    for rollout, rows in parts:
        idx = torch.tensor(rows, dtype=torch.long)
        picked.append(
            dataclasses.replace(
                rollout,
                prompt_ids=rollout.prompt_ids[idx],
                prompt_mask=rollout.prompt_mask[idx],
                completion_ids=rollout.completion_ids[idx],
                completion_mask=rollout.completion_mask[idx],
                completions=[rollout.completions[i] for i in rows],
                prompts=[rollout.prompts[i] for i in rows],
                truncated=rollout.truncated[idx],
                prompt_truncated=rollout.prompt_truncated[idx],
                sampling_logp=rollout.sampling_logp[idx] if rollout.sampling_logp is not None else None,
            )
        )
    sampled = [r.sampling_logp for r in picked]
    return Rollout(
        prompt_ids=_pad_cat([r.prompt_ids for r in picked], "left", pad_token_id),
        prompt_mask=_pad_cat([r.prompt_mask for r in picked], "left"),
        completion_ids=_pad_cat([r.completion_ids for r in picked], "right", pad_token_id),
        completion_mask=_pad_cat([r.completion_mask for r in picked], "right"),
        completions=[c for r in picked for c in r.completions],
        prompts=[p for r in picked for p in r.prompts],
        truncated=torch.cat([r.truncated for r in picked]),
        prompt_truncated=torch.cat([r.prompt_truncated for r in picked]),
        sampling_logp=_pad_cat(sampled, "right", 0.0) if all(t is not None for t in sampled) else None,
    )


def select_scores(parts: Sequence[tuple[MatrixScores, list[int]]]) -> MatrixScores:
    """Rows of each MatrixScores, concatenated (findings and failure masks follow their rows)."""
    first = parts[0][0]
    return MatrixScores(
        names=list(first.names),
        scores=torch.cat([m.scores[rows] for m, rows in parts]),
        findings={n: [m.findings[n][i] for m, rows in parts for i in rows] for n in first.names},
        failed=torch.cat([m.failed[rows] for m, rows in parts]),
        errors={k: v for m, _ in parts for k, v in m.errors.items()},
    )


def plan_batch(spreads: Sequence[torch.Tensor], target: int) -> tuple[list[list[int]], int]:
    """Which groups of each draw make the batch: groups with spread in draw order, up to `target`; if
    there are fewer, the first dropped groups fill it. -> (groups per draw, zero-spread groups used)."""
    chosen: list[list[int]] = [[] for _ in spreads]
    taken = 0
    for d, spread in enumerate(spreads):
        for g in spread.nonzero().flatten().tolist():
            if taken < target:
                chosen[d].append(g)
                taken += 1
    fill = target - taken
    for d, spread in enumerate(spreads):
        for g in (~spread).nonzero().flatten().tolist():
            if taken < target:
                chosen[d].append(g)
                taken += 1
    return [sorted(c) for c in chosen], fill


# ---------------------------------------------------------------------------------------------- risk redraws
def groups_without_a_pass(
    scores: torch.Tensor, failed: torch.Tensor, gates: Sequence, group_size: int
) -> torch.Tensor:
    """(N, K) raw scores and failure mask, [(k, Gate)] -> (P,) bool: for some gate dimension that applies
    to the group, no completion clears it (every one scores below `below` or its scorer failed). Such a
    group has nothing to learn on that dimension: e.g. a red-flag prompt none of whose answers directs
    the person to care."""
    out = torch.zeros(scores.size(0) // group_size, dtype=torch.bool)
    for k, gate in gates:
        col = scores[:, k].view(-1, group_size).cpu()
        fail = failed[:, k].view(-1, group_size).cpu()
        applies = (~torch.isnan(col)).any(1) | fail.any(1)
        passes = ((col >= gate.below) & ~fail).any(1)  # NaN >= x is False
        out |= applies & ~passes
    return out


# ---------------------------------------------------------------------------------------------- drivers
@dataclasses.dataclass
class Resampler:
    """What `refill` and `redraw` need from the step. `score` and `any_rank` are collective: every rank
    calls them the same number of times."""

    group_size: int
    generate: Callable[[list[dict[str, Any]]], Rollout]  # prompts -> G completions each
    score: Callable[[Rollout], MatrixScores]  # every dimension, failures counted
    reward: Callable[[Rollout, MatrixScores], torch.Tensor]  # (N,) as the step aggregates it
    any_rank: Callable[[int], int]  # the max of an int over ranks
    draw_prompts: Callable[[int, tuple], list[dict[str, Any]]]  # n random training prompts, seeded
    pad_token_id: int

    def spread(self, rollout: Rollout, matrix_scores: MatrixScores) -> torch.Tensor:
        """(groups,) bool: the group's rewards are not all equal."""
        return group_has_spread(self.reward(rollout, matrix_scores).detach().cpu(), self.group_size)


Draw = tuple[Rollout, MatrixScores]


def prompt_drawer(source) -> Callable[[int, tuple], list[dict[str, Any]]]:
    """`source.draw_prompts`, or a function that says how to give the step a source of extra prompts."""

    def draw_prompts(n: int, seed: tuple) -> list[dict[str, Any]]:
        if source is None or not hasattr(source, "draw_prompts"):
            raise ConfigError(
                "algorithm.dynamic_sampling needs more prompts than the batch: train with the "
                "PromptDataModule (python train.py does), or set module.prompt_source to an object with "
                "draw_prompts(n, seed). Fix: algorithm.dynamic_sampling=false otherwise."
            )
        return source.draw_prompts(n, seed)

    return draw_prompts


def _merge(parts: Sequence[tuple[Draw, list[int]]], pad_token_id: int) -> Draw:
    parts = [(draw, rows) for draw, rows in parts if rows]
    return (
        select_rollout([(r, rows) for (r, _), rows in parts], pad_token_id),
        select_scores([(m, rows) for (_, m), rows in parts]),
    )


def refill(
    sampler: Resampler, first: Draw, target: int, max_draws: int, seed: tuple
) -> tuple[Draw, dict[str, float]]:
    """Drop zero-spread groups and draw more prompts until `target` groups have a spread, at most
    `max_draws` extra draws; `seed` = (step, rank), the draw index goes between (a rerun draws the same).
    -> (draw of `target` groups, stats)."""
    G = sampler.group_size
    draws, spreads = [first], [sampler.spread(*first)]
    while len(draws) - 1 < max_draws:
        short = int(sum(int(s.sum()) for s in spreads) < target)
        if sampler.any_rank(short) == 0:  # every rank is full (all ranks agree)
            break
        extra = sampler.generate(sampler.draw_prompts(target, (*seed[:1], len(draws), *seed[1:])))
        draws.append((extra, sampler.score(extra)))
        spreads.append(sampler.spread(*draws[-1]))
    chosen, filled = plan_batch(spreads, target)
    stats = {
        "dynamic_sampling/extra_draws": float(len(draws) - 1),
        "dynamic_sampling/zero_std_groups_drawn": float(sum(int((~s).sum()) for s in spreads)),
        "dynamic_sampling/zero_std_groups": float(filled),  # in the batch: 0 unless the cap was hit
    }
    return _merge([(d, group_rows(g, G)) for d, g in zip(draws, chosen)], sampler.pad_token_id), stats


def redraw(sampler: Resampler, draw: Draw, gates: Sequence, times: int) -> tuple[Draw, dict[str, float]]:
    """Sample again the prompts of groups where no completion clears a gate (`groups_without_a_pass`), up
    to `times` times; a new group replaces the old one when one of its completions clears every gate.
    Every rank draws as long as any rank has such a group (a rank with none redraws its first group and
    keeps the old one). -> (draw, stats)"""
    G = sampler.group_size
    drawn = replaced = 0
    for _ in range(times):
        rollout, matrix_scores = draw
        stuck = groups_without_a_pass(matrix_scores.scores, matrix_scores.failed, gates, G)
        if sampler.any_rank(int(stuck.any())) == 0:
            break
        groups = stuck.nonzero().flatten().tolist() or [0]
        extra = sampler.generate([rollout.prompts[g * G] for g in groups])
        extra_scores = sampler.score(extra)
        fixed = ~groups_without_a_pass(extra_scores.scores, extra_scores.failed, gates, G)
        swap = {g: j for j, g in enumerate(groups) if bool(stuck[g]) and bool(fixed[j])}
        drawn, replaced = drawn + int(stuck.sum()), replaced + len(swap)
        if swap:
            keep = [g for g in range(len(stuck)) if g not in swap]
            parts = [(draw, group_rows(keep, G)), ((extra, extra_scores), group_rows(list(swap.values()), G))]
            draw = _merge(parts, sampler.pad_token_id)
    return draw, {"redraw/groups_without_a_pass": float(drawn), "redraw/replaced": float(replaced)}
