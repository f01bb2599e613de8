"""Item-level actions of the closed loop: a controlled failure changes that item's weight (and the reward
of an answer with that failure, in the right direction); when the failure stops, the change is undone."""

from types import SimpleNamespace

import pytest

from callbacks.closed_loop import ClosedLoopSupervision
from quark_lightning.data.datamodule import AreaWeightedSampler
from quark_lightning.loop.loop_state import LoopState
from quark_lightning.loop.metrics import evaluation_metrics, failing_answers
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.scorers.interface import ScoreResult
from quark_lightning.scorers.online import BadPatternScorer
from quark_lightning.scorers.rubric import RubricScorer
from quark_lightning.scorers.triage import TriageScorer

RUBRIC = [
    {"id": "e1", "type": "essential", "text": "Identifies a possible heart attack", "any": ["heart attack"]},
    {
        "id": "e2",
        "type": "essential",
        "text": "Tells the person to call an ambulance now",
        "any": ["ambulance"],
    },
    {"id": "i1", "type": "important", "text": "Advises not to drive", "any": ["(not|n't) drive"]},
    {"id": "p1", "type": "pitfall", "text": "Suggests waiting", "any": ["wait and see"]},
]
PROMPT = {
    "id": "card-001",
    "area": "cardiology",
    "messages": [{"role": "user", "content": "?"}],
    "rubric": RUBRIC,
}
MISSES_E2 = "This could be a heart attack."


def _module(dimensions, sampler=None):
    matrix = AlignmentMatrix(dimensions)
    module = SimpleNamespace(matrix=matrix, shaping=SimpleNamespace(loop=LoopState()))  # the state's owner
    return module, SimpleNamespace(datamodule=SimpleNamespace(sampler=sampler))


def _metrics(**rates):
    return {"step": 0, "dimensions": {n: {"pass_rate": r, "mean": r} for n, r in rates.items()}}


def test_a_rubric_essential_never_met_weighs_more_and_the_answer_missing_it_scores_lower():
    rubric = RubricScorer()
    module, trainer = _module([Dimension("expert_rubric", "expert", rubric, target=0.6)])
    loop = ClosedLoopSupervision(write_reports=False, item_gain=1.0, max_item_weight=3.0)
    # hand-computed: e1 met (2 x 1), e2 missed; bonus truncated -> 2 / (2 x 2 + 1) = 0.4
    assert rubric.score([PROMPT], [MISSES_E2]).scores.item() == pytest.approx(0.4)

    actions = loop.update_probe_items(trainer, module, _metrics(expert_rubric=0.0), [PROMPT], [MISSES_E2])
    assert rubric.item_weights == {"card-001": {"e2": 2.0}}  # i1 missed too, but essentials come first
    (a,) = actions
    assert a["kind"] == "rubric_item_weight" and a["target"] == "expert_rubric.card-001.e2"
    assert a["evidence"] == ["card-001"]
    assert "essential 'Tells the person to call an ambulance now' (e2 of card-001)" in a["reason"]
    assert "item weight 1.00 -> 2.00" in a["reason"]
    # e2 now has 2 points: 2 / (2 x (1 + 2) + 1) = 2/7, lower than 0.4
    assert rubric.score([PROMPT], [MISSES_E2]).scores.item() == pytest.approx(2 / 7)

    loop.update_probe_items(trainer, module, _metrics(expert_rubric=0.0), [PROMPT], [MISSES_E2])
    loop.update_probe_items(trainer, module, _metrics(expert_rubric=0.0), [PROMPT], [MISSES_E2])
    assert rubric.item_weights == {"card-001": {"e2": 3.0}}  # keeps missing: grows, bounded by the cap

    # essentials met, the important item still missed: now it is raised (by half the gain)
    both = "A heart attack is possible: call an ambulance."
    actions = loop.update_probe_items(trainer, module, _metrics(expert_rubric=0.0), [PROMPT], [both])
    assert rubric.item_weights == {"card-001": {"i1": 1.5}}  # e2 met -> back to 1
    assert {a["target"] for a in actions} == {"expert_rubric.card-001.e2", "expert_rubric.card-001.i1"}
    assert module.shaping.loop.item_weights == {"expert_rubric": {"card-001": {"i1": 1.5}}}  # one owner
    assert "item_weights" not in loop.state_dict()  # the callback keeps no copy

    # the dimension passes its target on the held-out split: every item weight is undone
    actions = loop.update_probe_items(trainer, module, _metrics(expert_rubric=0.95), [PROMPT], [both])
    assert rubric.item_weights == {} and "passes its target" in actions[0]["reason"]
    assert rubric.score([PROMPT], [MISSES_E2]).scores.item() == pytest.approx(0.4)


def test_the_held_out_yardstick_is_the_matrix_as_configured_and_the_trained_reward_comes_back():
    from quark_lightning.scorers.format import FormatScorer

    rubric, fmt = RubricScorer(), FormatScorer(rules=["clean_ending", "no_repetition"])
    module, _ = _module(
        [Dimension("expert_rubric", "expert", rubric, target=0.6), Dimension("format_rules", "format", fmt)]
    )
    loop = module.shaping.loop
    loop.item_weights = {"expert_rubric": {"card-001": {"e2": 3.0}}}
    loop.rule_weights = {"format_rules": {"clean_ending": 3.0}}
    loop.apply_to_scorers(module.matrix)
    cut = "This could be a heart attack and"  # fails clean_ending, passes no_repetition
    trained = module.matrix.score([PROMPT, PROMPT], [MISSES_E2, cut]).scores  # (2, 2)
    # by hand: rubric 2 / (2 x (1 + 3) + 1) = 2/9; format 1 of weight 1 passed out of 1 + 3 = 1/4
    assert trained[0, 0].item() == pytest.approx(2 / 9) and trained[1, 1].item() == pytest.approx(0.25)
    with loop.suspended(module.matrix):
        configured = module.matrix.score([PROMPT, PROMPT], [MISSES_E2, cut]).scores
    assert configured[0, 0].item() == pytest.approx(0.4) and configured[1, 1].item() == pytest.approx(0.5)
    assert rubric.item_weights == {"card-001": {"e2": 3.0}} and fmt.rule_weights["clean_ending"] == 3.0
    assert loop.item_weights == {"expert_rubric": {"card-001": {"e2": 3.0}}}  # the state never changed


def test_a_pitfall_that_keeps_firing_weighs_more_until_it_stops():
    rubric = RubricScorer()
    module, trainer = _module([Dimension("expert_rubric", "expert", rubric, target=0.6)])
    loop = ClosedLoopSupervision(write_reports=False)
    waits = "A heart attack is possible: call an ambulance, or wait and see."
    before = rubric.score([PROMPT], [waits]).scores.item()  # (4 - 2) / 5 = 0.4
    assert before == pytest.approx(0.4)
    loop.update_probe_items(trainer, module, _metrics(expert_rubric=0.0), [PROMPT], [waits])
    assert rubric.item_weights == {"card-001": {"p1": 2.0, "i1": 1.5}}
    # penalty 2 x 2 = 4 against 4 points: (4 - 4) / (4 + 1.5) = 0
    assert rubric.score([PROMPT], [waits]).scores.item() == pytest.approx(0.0)
    clean = "A heart attack is possible: call an ambulance and do not drive."
    loop.update_probe_items(trainer, module, _metrics(expert_rubric=0.0), [PROMPT], [clean])
    assert rubric.item_weights == {}


def test_a_failed_red_flag_prompt_is_drawn_more_often_until_its_answer_clears_the_gate():
    red = {
        **PROMPT,
        "red_flags": ["crushing chest pain"],
        "messages": [{"role": "user", "content": "crushing chest pain?"}],
    }
    sampler = AreaWeightedSampler(
        ["cardiology"] * 4, seed=0, ids=["card-001", "card-002", "card-003", "card-004"]
    )
    triage = Dimension(
        "triage", "fundamental", TriageScorer(), risk=3.0, target=1.0, gate={"below": 1.0, "value": -1.0}
    )
    module, trainer = _module([triage], sampler)
    loop = ClosedLoopSupervision(write_reports=False, prompt_gain=2.0)
    ignored = "Lie down and rest, it will probably pass."
    assert TriageScorer().score([red], [ignored]).scores.item() < 1.0  # the red flag is ignored

    actions = loop.update_probe_items(trainer, module, _metrics(triage=0.5), [red], [ignored])
    assert sampler.prompt_weights == {"card-001": 3.0} and module.shaping.loop.prompt_weights == {"card-001": 3.0}
    (a,) = actions
    assert a["kind"] == "prompt_sampling" and a["dimension"] == "triage" and a["evidence"] == ["card-001"]
    assert "failed the triage gate" in a["reason"] and "drawn 3.00x" in a["reason"]
    drawn = [sampler.ids[i] for _ in range(300) for i in sampler.draw(1)]
    assert drawn.count("card-001") / len(drawn) == pytest.approx(0.5, abs=0.08)  # 3 / (3 + 1 + 1 + 1)

    urgent = "This could be a heart attack: call an ambulance on 999 now."
    assert TriageScorer().score([red], [urgent]).scores.item() == 1.0
    actions = loop.update_probe_items(trainer, module, _metrics(triage=0.5), [red], [urgent])
    assert sampler.prompt_weights == {} and "clears every gate again" in actions[0]["reason"]


def test_the_probe_re_asks_prompts_with_an_active_weight_then_rotates():
    records = [{"id": f"t{i}"} for i in range(10)]
    trainer = SimpleNamespace(datamodule=SimpleNamespace(calibration_records=lambda: records))
    loop = ClosedLoopSupervision(write_reports=False, probe_prompts=3)
    state = LoopState()
    assert [r["id"] for r in loop._probe_prompts(trainer, state)] == ["t0", "t1", "t2"]
    state.prompt_weights = {"t7": 3.0}
    assert [r["id"] for r in loop._probe_prompts(trainer, state)] == ["t7", "t3", "t4"]
    assert state.probe_cursor == 5  # the rotation goes on where it stopped (saved with the state)


class _Fixed:
    """A reward model stand-in: a fixed score per answer text."""

    def __init__(self, table):
        self.table = table

    def score(self, prompts, completions):
        return ScoreResult.from_lists([self.table[c] for c in completions], [[] for _ in completions])


def test_a_reward_model_dimension_is_judged_against_the_reference_and_gets_a_gain():
    rm = Dimension("online_rm", "online", _Fixed({"ref a": 1.0, "ref b": 0.0, "x": 2.0, "y": -1.0}))
    matrix = AlignmentMatrix([rm])
    prompts = [{"id": "a", "reference": "ref a"}, {"id": "b", "reference": "ref b"}]
    for p in prompts:
        p["messages"] = [{"role": "user", "content": "?"}]
    scored = matrix.score(prompts, ["y", "x"])
    plain = evaluation_metrics(matrix, prompts, ["y", "x"], scored)
    assert (
        plain["dimensions"]["online_rm"]["pass_rate"] != plain["dimensions"]["online_rm"]["pass_rate"]
    )  # NaN

    from quark_lightning.shaping.reward_shaping import RewardShaping

    module = SimpleNamespace(matrix=matrix, shaping=RewardShaping.with_defaults(matrix, "sum"))
    loop = ClosedLoopSupervision(write_reports=False, pass_target=0.9, gain_strength=1.0)
    reference = loop._reference_scores(module, prompts)
    assert reference.tolist() == [[1.0], [0.0]]
    m = evaluation_metrics(matrix, prompts, ["y", "x"], scored, reference_scores=reference)
    row = m["dimensions"]["online_rm"]
    # answer a: -1 < 1 (fails), answer b: 2 >= 0 (passes) -> pass rate 0.5 against the reference
    assert row["pass_rate"] == 0.5 and row["target"] == "reference" and row["reference_mean"] == 0.5
    assert m["categories"]["online"]["pass_rate"] == 0.5
    m["diagnosis"] = []
    actions = loop.reward_update(SimpleNamespace(datamodule=None), module, m)
    assert module.shaping.loop_gain.tolist() == [1.5] and "loop gain 1.00 -> 1.50" in actions[0]["reason"]


def test_a_repeated_bad_phrase_of_failing_answers_joins_the_patterns_and_expires():
    bad = BadPatternScorer(feedback=None, detectors=())
    triage = Dimension("triage", "fundamental", TriageScorer(), target=1.0, gate={"below": 1.0})
    module, _ = _module([Dimension("bad_patterns", "online", bad, target=0.9), triage])
    loop = ClosedLoopSupervision(
        write_reports=False, max_mined_patterns=4, pattern_expiry=2, pattern_min_count=3
    )
    prompts = [
        {
            "id": f"q{i}",
            "messages": [{"role": "user", "content": "crushing chest pain?"}],
            "red_flags": ["crushing chest pain"],
            "reference": "Call an ambulance now: this could be a heart attack.",
        }
        for i in range(6)
    ]
    failing = [f"Rest for a while and just wait and see {i}." for i in range(4)]
    passing = ["Call an ambulance now.", "Call 999 for an ambulance now."]
    answers = failing + passing
    scored = module.matrix.score(prompts, answers)
    assert failing_answers(module.matrix, scored) == [True] * 4 + [False] * 2
    clean = "Rest and wait and see."
    before = bad.score(prompts[:1], [clean]).scores.item()

    actions = loop.update_loop_patterns(module, {"step": 3}, prompts, answers, scored)
    mined = module.shaping.loop.loop_patterns["bad_patterns"]
    assert any("wait and see" in p for p in mined) and all(p in bad.loop_patterns for p in mined)
    added = [a for a in actions if a["kind"] == "mined_pattern" and "wait and see" in a["target"]]
    assert (
        added and added[0]["dimension"] == "bad_patterns" and added[0]["evidence"] == ["q0", "q1", "q2", "q3"]
    )
    assert bad.score(prompts[:1], [clean]).scores.item() < before  # an answer with the phrase scores lower
    assert any('"' in a["reason"] and "wait and see" in a["reason"] for a in added)  # unmasked

    for step in (6, 9):  # the phrase stops firing: gone after `pattern_expiry` evaluations
        ok = ["Call an ambulance now."] * 6
        actions = loop.update_loop_patterns(
            module, {"step": step}, prompts, ok, module.matrix.score(prompts, ok)
        )
    assert module.shaping.loop.loop_patterns["bad_patterns"] == {} and bad.loop_patterns == {}
    assert any("expired" in a["reason"] for a in actions)
    assert bad.score(prompts[:1], [clean]).scores.item() == before


def test_a_garbled_phrase_made_of_reference_words_is_never_mined():
    from quark_lightning.loop.patterns import update_loop_patterns

    # a weak policy's failing answers repeat "ambulance or an": every content word is in the reference,
    # so punishing it would teach the policy to avoid the word triage needs
    answers = [(f"q{i}", f"ambulance or an emergency number {i} wait and see", True) for i in range(4)]
    answers += [("q8", "Rest at home.", False), ("q9", "Drink water.", False)]
    state, _ = update_loop_patterns({}, 1, answers, ["Call an ambulance on the emergency number now."])
    assert state and not any(set(p.split()) & {"ambulance", "emergency"} for p in state)
    assert any("wait" in p for p in state)
