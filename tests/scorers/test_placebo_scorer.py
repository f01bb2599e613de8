"""The placebo dimension of control arms (scorers/placebo.py): deterministic, in [0, 1), and unrelated to
the answer's length."""

from __future__ import annotations

import hashlib
import os

import pytest

from quark_lightning.scorers.placebo import PlaceboScorer, placebo_score
from tests.conftest import REPO


def test_the_placebo_score_is_the_answers_hash_read_as_a_fraction():
    digest = hashlib.sha256(b"p1\x00Drink water.").hexdigest()
    assert placebo_score("p1", "Drink water.") == int(digest[:8], 16) / 16**8
    result = PlaceboScorer().score([{"id": "p1"}, {"id": "p2"}], ["Drink water.", "Drink water."])
    assert result.scores[0].item() == pytest.approx(placebo_score("p1", "Drink water."), abs=1e-7)  # float32
    assert result.scores[0] != result.scores[1]  # the prompt id is part of it


def test_over_many_answers_the_placebo_is_uniform_and_ignores_length():
    import torch

    answers = [" ".join(["word"] * (1 + i % 80)) + f" {i}" for i in range(4000)]
    scores = PlaceboScorer().score([{"id": "q"}] * len(answers), answers).scores
    lengths = torch.tensor([len(a.split()) for a in answers], dtype=torch.float32)
    assert 0.0 <= float(scores.min()) and float(scores.max()) < 1.0
    assert abs(float(scores.mean()) - 0.5) < 0.02  # uniform: mean 1/2, sd of the mean 0.0046
    corr = torch.corrcoef(torch.stack([scores, lengths]))[0, 1]
    assert abs(float(corr)) < 0.06  # sd of a null correlation over 4000 answers: 0.016


def test_the_control_experiment_trains_on_the_placebo_alone():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base=None):
        cfg = compose("train", overrides=["+experiment=placebo_control"])
    dims = cfg.matrix.dimensions
    assert dims.placebo.weight == 1.0 and cfg.optimization.aggregator == "sum"
    others = [name for name in dims if name != "placebo"]
    assert len(others) == 12 and all(
        dims[name].weight == 0.0 and not dims[name].get("gate") for name in others
    )
    assert cfg.rollout.max_new_tokens == 72 and cfg.algorithm.lr == 1.0e-4  # the real demo's, unchanged
