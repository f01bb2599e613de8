"""Closed-loop bad patterns: phrases mined from failing held-out answers, their expiry, and their reward."""

import re

import pytest

from quark_lightning.infra.text import words
from quark_lightning.loop.patterns import update_loop_patterns
from quark_lightning.scorers.online import BadPatternScorer, mine_bad_patterns, ngram_set

PHRASE = "wait and see"
FAILING = {  # four repeat the phrase, two fail otherwise
    "card-003": "Chest tightness after climbing stairs: just wait and see whether it settles.",
    "neur-010": "A new headache like this one? Wait and see how it goes tomorrow.",
    "gast-001": "Blood in the stool is common; you can wait and see for now.",
    "resp-002": "For the wheeze, wait and see, it usually passes.",
    "derm-004": "That mole changing shape is probably nothing to worry about.",
    "endo-007": "Thirst and weight loss happen to everybody sometimes.",
}
PASSING = {
    "card-001": "Chest pain on exertion needs a same-day GP appointment; call 999 if it lasts over 15 minutes.",
    "neur-002": "A sudden severe headache is an emergency: call 999 now.",
    "gast-005": "Blood in the stool needs a GP visit within two weeks, sooner if you feel faint.",
    "resp-006": "Use your blue inhaler, 2 puffs, and book an asthma review this week.",
}
REFERENCES = [
    "Chest pain on exertion can be angina: see a GP today, and call 999 if the pain lasts over 15 minutes.",
    "A thunderclap headache needs emergency care: call 999.",
    "Rectal bleeding should be checked by a GP within two weeks.",
]
CLEAN = "Drink water through the day, about 2 litres, and rest for 2 days."  # no built-in pattern


def held_out(failing=FAILING, passing=PASSING):
    return [(i, t, True) for i, t in failing.items()] + [(i, t, False) for i, t in passing.items()]


def scorer(**kw):
    return BadPatternScorer(feedback=None, **kw)


def test_a_phrase_repeated_in_failing_answers_is_mined_with_its_evidence_and_reason():
    state, actions = update_loop_patterns({}, 40, held_out(), REFERENCES)
    assert list(state) == [PHRASE]
    entry = state[PHRASE]
    evidence = ["card-003", "gast-001", "neur-010", "resp-002"]
    assert entry == {
        "pattern": PHRASE,
        "mined_at": 40,
        "evidence": evidence,
        "z": pytest.approx(entry["z"]),
        "failing_count": 4,
        "last_fired": 40,
        "idle": 0,
    }
    assert entry["z"] >= 1.645
    (action,) = actions
    assert action["kind"] == "mined_pattern" and action["target"] == PHRASE and action["value"] == 1.0
    assert action["evidence"] == evidence
    assert action["reason"] == (
        f'bad_patterns: mined "wait and see" from 4 of 6 failing held-out answers '
        f"(card-003, gast-001, neur-010, ...), absent from passing answers and references "
        f"(z={entry['z']:.2f}); joins the pattern list"
    )


def test_a_known_phrase_is_kept_not_re_added_and_refreshed():
    state, _ = update_loop_patterns({}, 40, held_out(), REFERENCES)
    fewer = {k: v for k, v in FAILING.items() if k != "card-003"}
    again, actions = update_loop_patterns(state, 50, held_out(fewer), REFERENCES, min_count=4)
    assert actions == []  # still active: no action
    assert again[PHRASE]["last_fired"] == 50 and again[PHRASE]["mined_at"] == 40
    assert again[PHRASE]["evidence"] == ["gast-001", "neur-010", "resp-002"]
    assert state[PHRASE]["last_fired"] == 40  # the input state is not modified


def test_a_phrase_found_in_a_reference_is_never_added():
    failing = {**FAILING, "card-009": "Book an appointment and call 999 soon."}
    failing = {k: f"{v} Rest and call 999." for k, v in failing.items()}
    raw = mine_bad_patterns(
        [{"response": t, "rating": -1} for t in failing.values()]
        + [{"response": t, "rating": 1} for t in [*PASSING.values(), *REFERENCES]],
        min_z=0.5,
        dedupe_jaccard=None,
        top_k=1000,
    )
    assert "call 999" in {p.pattern for p in raw}  # the miner alone would take it ...
    state, _ = update_loop_patterns({}, 0, held_out(failing), REFERENCES, min_z=0.5)
    assert "call 999" not in state  # ... but a reference says it
    in_refs = set().union(*(ngram_set(words(r), 3) for r in REFERENCES))
    assert state and not set(state) & in_refs


def test_cap_is_respected():
    failing = dict(FAILING)
    for k in ["derm-004", "endo-007", "card-003", "neur-010", "resp-002"]:
        failing[k] += " Sleep it off tonight."  # a second phrase, in five failing answers: the better z
    both, _ = update_loop_patterns({}, 0, held_out(failing), REFERENCES)
    assert len(both) >= 2
    one, actions = update_loop_patterns({}, 0, held_out(failing), REFERENCES, cap=1)
    assert len(one) == 1 == len(actions)
    best = max(both.values(), key=lambda e: e["z"])["pattern"]
    assert list(one) == [best] == ["sleep"]  # the miner prefers a phrase ending on content words
    full, actions = update_loop_patterns(one, 1, held_out(failing), REFERENCES, cap=1)
    assert list(full) == [best] and actions == []
    assert update_loop_patterns({}, 0, held_out(failing), REFERENCES, cap=0) == ({}, [])


def test_a_phrase_the_policy_stops_producing_expires_and_its_reward_comes_back():
    bad = scorer()
    answer = f"Just {PHRASE}. {CLEAN}"
    assert bad.score([{}], [answer]).scores.tolist() == [1.0]

    state, _ = update_loop_patterns({}, 10, held_out(), REFERENCES, expiry=2)
    bad.set_loop_patterns(state)
    result = bad.score([{}], [answer, CLEAN])
    assert result.scores.tolist() == pytest.approx([0.75, 1.0])  # loop_weight 0.25, clean answer unchanged
    assert result.findings[0] == [
        "bad pattern 'loop-mined': \"wait and see\" (tag: loop, mined at step 10 from 4 failing held-out answers)"
    ]
    assert result.findings[1] == []

    cured = {k: re.sub(PHRASE, "see a GP today", v, flags=re.I) for k, v in FAILING.items()}
    state, actions = update_loop_patterns(state, 20, held_out(cured), REFERENCES, expiry=2)
    assert state[PHRASE]["idle"] == 1 and actions == []  # one evaluation without it: still there
    bad.set_loop_patterns(state)
    assert bad.score([{}], [answer]).scores.tolist() == pytest.approx([0.75])

    state, actions = update_loop_patterns(state, 30, held_out(cured), REFERENCES, expiry=2)
    assert state == {}
    (action,) = actions
    assert action["kind"] == "mined_pattern" and action["target"] == PHRASE and action["value"] == 0.0
    assert action["evidence"] == ["card-003", "gast-001", "neur-010", "resp-002"]
    assert action["reason"] == (
        'bad_patterns: mined "wait and see" expired: no held-out answer contained it for 2 evaluations '
        "(mined at step 10, last seen at step 10); leaves the pattern list"
    )
    bad.set_loop_patterns(state)
    assert bad.score([{}], [answer]).scores.tolist() == [1.0]


def test_a_passing_answer_with_the_phrase_keeps_it_alive():
    state, _ = update_loop_patterns({}, 0, held_out(), REFERENCES, expiry=1)
    passing = {**PASSING, "card-001": PASSING["card-001"] + " Otherwise wait and see."}
    cured = {k: re.sub(PHRASE, "see a GP today", v, flags=re.I) for k, v in FAILING.items()}
    state, actions = update_loop_patterns(state, 1, held_out(cured, passing), REFERENCES, expiry=1)
    assert actions == [] and state[PHRASE]["idle"] == 0 and state[PHRASE]["last_fired"] == 1
    assert state[PHRASE]["evidence"] == ["card-003", "gast-001", "neur-010", "resp-002"]  # kept


def test_loop_patterns_leave_other_scores_unchanged_and_cover_long_phrases():
    bundled = BadPatternScorer()  # feedback-mined patterns too
    answers = [CLEAN, "Everyone is different, so hard to say.", "It depends. Everyone is different."]
    before = bundled.score([{}] * 3, answers)
    bundled.set_loop_patterns({"please book a gp visit": {"mined_at": 3, "failing_count": 5}})
    after = bundled.score([{}] * 3, answers + ["Please book a GP visit."])
    assert after.scores.tolist()[:3] == before.scores.tolist() and after.findings[:3] == before.findings
    assert after.scores.tolist()[3] == pytest.approx(0.75)  # a 5-gram, longer than the mined n-grams


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"cap": -1}, "cap"),
        ({"expiry": 0}, "expiry"),
        ({"min_count": 0}, "min_count"),
        ({"max_n": 0}, "max_n"),
    ],
)
def test_bad_settings_name_the_key(kw, key):
    with pytest.raises(ValueError, match=rf"callbacks\.closed_loop\.{key}: got"):
        update_loop_patterns({}, 0, held_out(), REFERENCES, **kw)


def test_loop_weight_must_be_a_weight():
    with pytest.raises(ValueError, match="loop_weight"):
        scorer(loop_weight=1.5)
    assert scorer(loop_weight=0.0).loop_weight == 0.0
