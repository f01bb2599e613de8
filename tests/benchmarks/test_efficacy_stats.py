"""The efficacy benchmark's statistics (benchmarks/efficacy_stats.py) and its common random numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.efficacy_stats import bootstrap, mean_over, paired_difference, resample, worst_change
from callbacks.common_random_numbers import CommonRandomNumbers, step_seed


def test_mean_over_leaves_out_questions_a_metric_does_not_apply_to():
    values = {0: np.array([1.0, math.nan, 0.0]), 1: np.array([1.0, 1.0, math.nan])}
    full = [(0, np.arange(3)), (1, np.arange(3))]
    assert mean_over(values, full) == pytest.approx(3 / 4)
    assert mean_over(values, [(1, np.array([0, 0, 2]))]) == 1.0  # question 0 drawn twice, 2 is NaN


def test_resample_draws_seeds_then_questions():
    draw = resample([3, 5], 4, np.random.default_rng(0))
    assert len(draw) == 2 and all(s in (3, 5) for s, _ in draw)
    assert all(q.shape == (4,) and q.min() >= 0 and q.max() < 4 for _, q in draw)


def test_a_constant_paired_difference_has_a_zero_width_interval():
    a = {s: np.array([1.0, 0.0, 1.0, 0.0]) for s in range(5)}
    b = {s: v - 0.25 for s, v in a.items()}  # every cell 0.25 lower: the paired difference is exactly 0.25
    point, lo, hi = paired_difference({"a": a, "b": b}, "a", "b", list(range(5)), B=200)
    assert point == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_the_interval_covers_the_truth_and_shrinks_with_more_seeds():
    rng = np.random.default_rng(1)

    def arm(n_seeds: int, effect: float):
        return {s: (rng.random(30) < 0.3 + effect).astype(float) for s in range(n_seeds)}

    widths = []
    for n in (2, 8):
        values = {"a": arm(n, 0.2), "b": arm(n, 0.0)}
        point, lo, hi = paired_difference(values, "a", "b", list(range(n)), B=400)
        assert lo < point < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0]


def test_worst_change_is_the_minimum_over_dimensions_in_base_sd_units():
    full = [(0, np.arange(2))]
    dims = {
        "d1": {"base": {0: np.array([0.0, 0.0])}, "x": {0: np.array([1.0, 1.0])}},  # +1 / sd 0.5 = +2
        "d2": {"base": {0: np.array([1.0, 1.0])}, "x": {0: np.array([0.5, 0.5])}},  # -0.5 / sd 1 = -0.5
    }
    assert worst_change(dims, "base", "x", {"d1": 0.5, "d2": 1.0}, full) == pytest.approx(-0.5)
    assert bootstrap(lambda d: worst_change(dims, "base", "x", {"d1": 0.5, "d2": 1.0}, d), [0], 2, B=50)[0] == -0.5


def test_common_random_numbers_reseed_each_step_from_seed_and_step(tmp_path):
    class Trainer:
        global_step, is_global_zero = 3, True

    log = tmp_path / "prompts.jsonl"
    crn = CommonRandomNumbers(seed=2, prompts_path=str(log))
    crn.on_train_batch_start(Trainer(), None, [{"id": "a"}, {"id": "b"}], 0)
    first = torch.rand(3)
    torch.manual_seed(step_seed(2, 3))
    assert torch.equal(first, torch.rand(3))  # the same stream whatever ran before
    assert log.read_text().strip() == '{"step": 3, "ids": ["a", "b"]}'
    assert step_seed(2, 3) != step_seed(3, 2)
