"""Paired two-level bootstrap for the efficacy benchmark (benchmarks/efficacy_real.py).

Data layout: `values[arm][seed]` is a (Q,) array over the evaluation questions (NaN where the metric does
not apply to a question, e.g. triage on a routine question). Arms of one seed share the seed's prompt
order and random streams (common random numbers), and every arm answers the same questions, so a
comparison is paired twice: by seed and by question.

One bootstrap replicate draws seeds with replacement from the seeds both sides have, then, for each drawn
seed, questions with replacement (the same questions for both sides), and computes the statistic on that
resample. The 95% interval is the 2.5 and 97.5 percentiles over `B` replicates (percentile bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Values = dict[str, dict[int, np.ndarray]]  # arm -> seed -> (Q,)


def resample(seeds: Sequence[int], n_questions: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """One two-level draw: [(seed, question indices (Q,)), ...] with len(seeds) entries."""
    drawn = rng.choice(len(seeds), size=len(seeds), replace=True)
    return [(seeds[i], rng.integers(0, n_questions, size=n_questions)) for i in drawn]


def mean_over(values: dict[int, np.ndarray], draw: list[tuple[int, np.ndarray]]) -> float:
    """Mean of the drawn (seed, question) cells, NaN cells left out."""
    cells = np.concatenate([values[s][q] for s, q in draw])
    cells = cells[~np.isnan(cells)]
    return float(cells.mean()) if cells.size else float("nan")


def bootstrap(
    statistic: Callable[[list[tuple[int, np.ndarray]]], float],
    seeds: Sequence[int],
    n_questions: int,
    B: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point estimate on the full data, 2.5th, 97.5th percentile) of `statistic` over replicates."""
    full = [(s, np.arange(n_questions)) for s in seeds]
    point = statistic(full)
    rng = np.random.default_rng(seed)
    reps = np.array([statistic(resample(list(seeds), n_questions, rng)) for _ in range(B)])
    reps = reps[~np.isnan(reps)]
    if reps.size == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return point, float(lo), float(hi)


def paired_difference(values: Values, arm: str, other: str, seeds: Sequence[int], B: int = 2000):
    """mean(arm) - mean(other) over the shared seeds and questions, with its 95% interval."""
    n = len(next(iter(values[arm].values())))
    return bootstrap(lambda d: mean_over(values[arm], d) - mean_over(values[other], d), seeds, n, B)


def worst_change(
    dims: dict[str, Values], base: str, arm: str, scale: dict[str, float], draw: list[tuple[int, np.ndarray]]
) -> float:
    """min over dimensions of (mean(arm) - mean(base)) / scale[dim] on one draw: the worst dimension's
    change in base-policy standard deviations (dims[dim] is a Values of per-question means)."""
    changes = [
        (mean_over(v[arm], draw) - mean_over(v[base], draw)) / scale[d]
        for d, v in dims.items()
        if scale.get(d, 0) > 0
    ]
    changes = [c for c in changes if not np.isnan(c)]
    return min(changes) if changes else float("nan")
