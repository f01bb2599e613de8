"""RewardTrend: start vs end of training never average overlapping windows (hand-computed numbers)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from callbacks.reward_trend import RewardTrend


def finish(history: dict[str, list[float]], tmp_path, window: int = 5) -> dict:
    """Run the callback's end of training on a given history -> summary.json (capsys holds the print)."""
    trend = RewardTrend(window=window, summary_path=str(tmp_path / "summary.json"))
    trend.history = {k: list(v) for k, v in history.items()}
    trend.on_train_end(SimpleNamespace(is_global_zero=True), None)
    return json.loads((tmp_path / "summary.json").read_text())


def test_fewer_than_two_windows_of_steps_use_half_the_steps_at_each_end(tmp_path, capsys):
    summary = finish({"reward": [0, 1, 2, 3, 4, 5], "rewards/safety/mean": [1, 1, 1, 0, 0, 0]}, tmp_path)
    out = capsys.readouterr().out
    reward = summary["metrics"]["reward"]
    assert reward["start"] == pytest.approx(1.0)  # mean of 0, 1, 2 (not of 0..4)
    assert reward["end"] == pytest.approx(4.0)  # mean of 3, 4, 5 (not of 1..5)
    assert reward["window"] == 3 and reward["steps"] == 6
    safety = summary["metrics"]["rewards/safety/mean"]
    assert (safety["start"], safety["end"]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert summary["window"] == 3  # the window actually used, not the configured 5
    assert summary["configured_window"] == 5
    assert "first 3 vs the last 3 of 6 steps" in out
    assert "last 5" not in out


def test_odd_step_count_leaves_the_middle_step_out(tmp_path, capsys):
    summary = finish({"reward": [0, 1, 2, 3, 4, 5, 6]}, tmp_path)
    reward = summary["metrics"]["reward"]
    assert (reward["start"], reward["end"], reward["window"]) == (pytest.approx(1.0), pytest.approx(5.0), 3)
    assert "first 3 vs the last 3 of 7 steps" in capsys.readouterr().out


def test_enough_steps_keep_the_configured_window(tmp_path, capsys):
    summary = finish({"reward": list(range(10))}, tmp_path)
    reward = summary["metrics"]["reward"]
    assert (reward["start"], reward["end"]) == (pytest.approx(2.0), pytest.approx(7.0))  # 0..4, 5..9
    assert summary["window"] == reward["window"] == 5
    assert "first 5 vs the last 5 of 10 steps" in capsys.readouterr().out


def test_one_step_says_there_is_no_trend(tmp_path, capsys):
    summary = finish({"reward": [0.25]}, tmp_path)
    reward = summary["metrics"]["reward"]
    assert reward["start"] == reward["end"] == pytest.approx(0.25)
    assert reward["window"] == 1 and summary["window"] == 1
    assert "no trend" in capsys.readouterr().out


def test_metrics_of_different_lengths_print_their_own_window(tmp_path, capsys):
    summary = finish({"reward": list(range(10)), "rewards/judge/mean": [0, 1, 2, 3]}, tmp_path)
    judge = summary["metrics"]["rewards/judge/mean"]
    assert (judge["start"], judge["end"], judge["window"]) == (pytest.approx(0.5), pytest.approx(2.5), 2)
    assert summary["window"] == 5  # the reward's
    out = capsys.readouterr().out
    assert "(first/last 2 of 4 steps)" in out and "(first/last 5 of 10 steps)" in out
