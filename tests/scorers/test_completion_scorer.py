"""The `complete` dimension (scorers/completion.py): a completion cut at the cap is told from one that
ended by the rollout's own flag (`Completion.truncated`), never from the text, and, gated as in the real
demo, a cut answer ranks below every finished one of its group."""

from __future__ import annotations

import copy
import math
import os
import pickle

import torch

from quark_lightning.rollout.engine import Completion
from quark_lightning.scorers.completion import CUT, CompletionScorer
from tests.conftest import REPO


def test_a_completion_is_text_with_the_rollouts_cut_flag_and_is_saved_as_plain_text(tmp_path):
    cut = Completion("Rest, drink water and see a doctor.", truncated=True)
    assert cut == "Rest, drink water and see a doctor." and isinstance(cut, str) and cut.truncated
    assert not hasattr(cut.strip(), "truncated")  # a new string is plain text: the flag is not guessed
    for saved in (pickle.loads(pickle.dumps(cut)), copy.deepcopy(cut), copy.copy(cut)):
        assert saved == cut and type(saved) is str  # the flag belongs to the rollout, not to saved state
    # the closed loop's report history, which checkpoints hold, quotes answers: saved as plain text
    from quark_lightning.loop.metrics import diagnose

    prompts = [{"id": "p1", "messages": [{"role": "user", "content": "Chest pain?"}]}]
    found = diagnose(prompts, [cut], {"complete": [[CUT]]}, torch.tensor([[False]]), ["complete"])
    assert found[0]["examples"][0]["answer"] == cut
    torch.save({"history": [{"diagnosis": found}]}, tmp_path / "state.ckpt")
    assert torch.load(tmp_path / "state.ckpt", weights_only=True)["history"][0]["diagnosis"] == found


def test_finished_cut_and_unknown_answers():
    answers = [Completion("Call 999 now.", False), Completion("Call 999 now.", True), "Call 999 now."]
    result = CompletionScorer().score([{"id": "p"}] * 3, answers)
    assert result.scores[:2].tolist() == [1.0, 0.0] and math.isnan(result.scores[2])
    assert result.findings == [[], [CUT], []]  # the cut one ends in a full stop: the text cannot tell


def test_the_engine_marks_each_completion_it_cut(noisy_model_dir):
    from quark_lightning.models.loading import load_causal_lm
    from quark_lightning.rollout.hf_generate import HFGenerateEngine

    loaded = load_causal_lm(noisy_model_dir)
    prompts = [
        {"id": i, "messages": [{"role": "user", "content": q}]}
        for i, q in (("a", "Head ache?"), ("b", "Cough?"))
    ]

    def sample(engine):
        torch.manual_seed(0)
        return engine.generate(loaded.model, loaded.tokenizer, prompts, 4)

    first = sample(HFGenerateEngine(max_new_tokens=4))
    stop = int(first.completion_ids[0, 1])  # the first answer's second token, made a stop token
    rollout = sample(HFGenerateEngine(max_new_tokens=4, eos_token_ids=[stop]))
    flags = [c.truncated for c in rollout.completions]
    assert flags == rollout.truncated.tolist() and 0 < sum(flags) < len(flags), flags
    assert flags[0] is False  # it ends at its second token now
    scores = CompletionScorer().score(rollout.prompts, rollout.completions).scores
    assert scores.tolist() == [0.0 if f else 1.0 for f in flags]


def test_gated_as_in_the_real_demo_a_cut_answer_ranks_below_every_finished_one():
    from hydra import compose, initialize_config_dir

    from quark_lightning.matrix.dimension import Gate
    from quark_lightning.shaping.aggregation import AggregationContext, aggregate_and_advantages

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base=None):
        cfg = compose("train", overrides=["+experiment=real_demo"])
    spec = cfg.matrix.dimensions.complete
    assert spec.scorer._target_ == "quark_lightning.scorers.completion.CompletionScorer"
    gate = Gate(**spec.gate)
    # one group of 4 under `sum`: dimension 0 pays for content (the cut answers wrote more), dimension 1 is
    # `complete`; answers 0 and 1 were cut
    scores = torch.tensor([[5.0, 0.0], [4.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    weights, ctx = torch.tensor([1.0, 1.0]), AggregationContext(group_size=4)
    _, adv, _ = aggregate_and_advantages("sum", scores, weights, ctx, "group", [(1, gate)])
    _, ungated, _ = aggregate_and_advantages("sum", scores, weights, ctx, "group", [])
    assert float(ungated[0]) > float(ungated[2])
    assert float(adv[:2].max()) < float(adv[2:].min())  # without the gate the cut ones would lead
