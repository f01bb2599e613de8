"""Length is not what the bundled reward models measure.

A review found that the ORM trained by `python train.py +experiment=rm_orm` on the hand-made pairs (the
better answer the longer one in 95% of them, 66 against 39 words on average) mostly measured length:
padding a wrong answer with fluent, empty filler lifted its score to the expert reference's.
scripts/make_length_balanced_pairs.py appends pairs where the rejected answer is the longer one
(DATA_CARD.md); these tests pin both the data and what a reward model trained on it does.

- Data (fast): the preferred answer is the longer one in 40-60% of the bundled pairs with a winner and
  both sides have mean lengths within 10%; the same share for the liked-vs-disliked pairs of the online
  feedback; the files are exactly what the generator script writes; the filler matches no rubric pattern.
- Reward models (the shipped recipe: `train_experiment=..., backbone="tiny"`, what
  conf/matrix/medical.yaml does, trained once into a temporary cache): on the 150 bundled prompts, the
  question's hand-written wrong answer padded with held-out filler (`EVAL_BOILERPLATE`, never in any
  training file) to the reference's length + 50 words scores below the unpadded reference, and so does
  the unpadded wrong answer (which is shorter than the reference: a model that simply prefers shorter
  answers fails that half). A pure length detector scores 0 on the first share, its opposite 0 on the
  second.

Measured (tiny model, the shipped recipe and seed, 150 prompts; filler after / before / around the wrong
answer; "unpadded": the unpadded wrong answer below the reference; "held-out": the length-controlled
accuracy of the stage's own held-out evaluation):

    rm_orm, hand-made pairs only (the old file)  padded 0.56 / 0.59 / 0.53  unpadded 1.00  held-out 0.59
    rm_orm, length-balanced pairs                padded 0.95 / 0.89 / 0.93  unpadded 0.99  held-out 1.00
    rm_online, old feedback                      padded 0.91 / 0.91 / 0.90  unpadded 0.99  held-out 0.78
    rm_online, length-balanced feedback          padded 1.00 / 1.00 / 1.00  unpadded 0.97  held-out 0.96

(rm_orm with seeds 1 and 2 instead of the shipped one: padded 0.87 / 0.92 / 0.92 and 0.99 / 1.00 / 0.99.)
The threshold, 0.8 for every share, fails the old pairs' ORM. One training takes about 25 s (rm_orm) and
20 s (rm_online) on 2 CPU cores, after a few seconds building the tiny model.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from quark_lightning.data.length_control import (
    CONTROL_EXTRA_WORDS,
    EVAL_BOILERPLATE,
    ORIGIN,
    TRAIN_BOILERPLATE,
    WHERE,
    length_balance,
    length_control_pairs,
    pad_with_boilerplate,
    preferred_and_rejected,
    stable_seed,
    word_count,
)
from quark_lightning.data.preferences import (
    feedback_to_pairs,
    load_online_feedback,
    load_preference_pairs,
    question_key,
)
from scripts import make_length_balanced_pairs as generator

THRESHOLD = 0.8


# ------------------------------------------------------------------ the data
def test_bundled_pairs_length_says_nothing_about_preference():
    stats = length_balance(load_preference_pairs("bundled"))
    assert 0.4 <= stats["preferred_longer"] <= 0.6, stats
    assert abs(stats["mean_preferred_words"] / stats["mean_rejected_words"] - 1) <= 0.1, stats
    old = length_balance([p for p in load_preference_pairs("bundled") if generator.number(p["id"]) <= 336])
    assert old["preferred_longer"] > 0.9  # what the generated pairs balance


def test_bundled_feedback_liked_is_not_mostly_the_longer_answer():
    pairs = feedback_to_pairs(load_online_feedback("bundled"), ties=False, max_pairs_per_question=None)
    stats = length_balance(pairs)
    assert 0.4 <= stats["preferred_longer"] <= 0.6, stats
    # the disliked side is the longer on average (the 14 hand-made verbose records run ~290 words)
    assert stats["mean_preferred_words"] <= 1.1 * stats["mean_rejected_words"], stats


def test_bundled_files_are_what_the_generator_writes():
    pairs, feedback = generator.read(generator.PAIRS), generator.read(generator.FEEDBACK)
    assert generator.rebuild_pairs(pairs) == pairs
    assert generator.rebuild_feedback(feedback, pairs) == feedback
    generated = pairs[generator.ORIGINAL_PAIRS :]
    assert len(generated) == 426 and {p["preference"] for p in generated} == {"a", "b"}
    assert sum(p["preference"] == "a" for p in generated) == len(generated) // 2
    for p in generated:  # filler only ever on the losing side
        better, _ = preferred_and_rejected(p)
        assert p["origin"] == ORIGIN and not any(s in better for s in TRAIN_BOILERPLATE)


def test_generated_rows_are_no_sft_demonstrations():
    from quark_lightning.data.sft_sources import liked_feedback, preferred_responses

    hand_made = [p for p in load_preference_pairs("bundled") if "origin" not in p]
    winners = {preferred_and_rejected(p)[0] for p in hand_made if p["preference"] != "tie"}
    examples = preferred_responses()
    assert {e["reference"] for e in examples} == winners and len(examples) == len(winners)
    liked = [r for r in load_online_feedback("bundled") if r["rating"] == 1 and "origin" not in r]
    assert len(liked_feedback()) == len(liked)


def test_filler_is_content_free_for_the_rubrics_and_held_out_from_training():
    prompts = [json.loads(line) for line in open(generator.ASSETS / "medical_prompts.jsonl")]
    sentences = TRAIN_BOILERPLATE + EVAL_BOILERPLATE
    hits = [
        (r["id"], pattern, s)
        for r in prompts
        for item in r["rubric"]
        for pattern in item["any"]
        for s in sentences
        if re.search(pattern, s, re.IGNORECASE)
    ]
    assert not hits
    assert not set(TRAIN_BOILERPLATE) & set(EVAL_BOILERPLATE)
    texts = " ".join(
        [p["response_a"] + " " + p["response_b"] for p in load_preference_pairs("bundled")]
        + [r["response"] for r in load_online_feedback("bundled")]
    )
    assert not [s for s in EVAL_BOILERPLATE if s in texts]


def test_padding_and_length_control_pairs():
    text = "Take one tablet a day."
    padded = pad_with_boilerplate(text, 40, seed=3)
    assert padded.startswith(text) and word_count(padded) >= 40
    assert padded == pad_with_boilerplate(text, 40, seed=3)  # deterministic
    assert pad_with_boilerplate(text, 3) == text  # long enough already
    assert pad_with_boilerplate(text, 40, seed=3, where="start").endswith(text)
    msgs = [{"role": "user", "content": "q"}]
    pairs = [
        {"id": "x", "messages": msgs, "response_a": "short bad", "response_b": text, "preference": "b"},
        {"id": "t", "messages": msgs, "response_a": "one", "response_b": "two", "preference": "tie"},
    ]
    (control,) = length_control_pairs(pairs)
    assert control["preference"] == "a" and control["response_a"] == text
    assert control["response_b"].startswith("short bad")
    assert word_count(control["response_b"]) >= word_count(text) + CONTROL_EXTRA_WORDS


# ------------------------------------------------------------------ reward models trained by the recipe
def wrong_answers() -> dict:
    """The hand-written wrong answer of each bundled question (one each, in the hand-made pairs)."""
    out = {}
    for p in load_preference_pairs("bundled"):
        if generator.number(p["id"]) <= generator.ORIGINAL_PAIRS and any(
            s in p["reason"] for s in generator.SPECIFIC
        ):
            out[question_key(p["messages"])] = preferred_and_rejected(p)[1]
    return out


def length_shares(scorer, records) -> dict[str, float]:
    """Shares of prompts where the reference outscores the wrong answer, unpadded and padded (per WHERE)."""
    wrong = wrong_answers()
    msgs = [r["messages"] for r in records]
    refs = [r["reference"] for r in records]
    bad = [wrong[question_key(r["messages"])] for r in records]

    def scores(texts):
        return scorer.model.score(msgs, texts, scorer.batch_size, scorer.max_length)

    ref = scores(refs)
    shares = {"unpadded": float((scores(bad) < ref).float().mean())}
    for where in WHERE:
        padded = [
            pad_with_boilerplate(b, word_count(r) + 50, EVAL_BOILERPLATE, stable_seed(rec["id"]), where)
            for b, r, rec in zip(bad, refs, records)
        ]
        shares[where] = float((scores(padded) < ref).float().mean())
    return shares


@pytest.fixture(scope="module")
def rm_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("rm_length_cache"))


def shipped_reward_model(experiment: str, cache: str):
    """The reward model conf/matrix/medical.yaml trains (train_experiment, backbone tiny), as the matrix
    builder resolves it before building the ORMScorer."""
    from quark_lightning.reward_model.rm_cache import resolved_scorer_config
    from quark_lightning.scorers.orm import ORMScorer

    return ORMScorer(**resolved_scorer_config(dict(
        train_experiment=experiment, cache_dir=cache, backbone="tiny", batch_size=16, max_length=384,
        train_overrides=["~logger"],
    )))  # fmt: skip


@pytest.mark.parametrize("experiment", ["rm_orm", "rm_online"])
def test_shipped_reward_model_ranks_padded_wrong_answers_below_the_reference(
    experiment, rm_cache, bundled_records
):
    scorer = shipped_reward_model(experiment, rm_cache)
    shares = length_shares(scorer, bundled_records)
    print(f"\n{experiment}: wrong < reference {shares}")
    assert all(share >= THRESHOLD for share in shares.values()), shares
    summary = json.load(open(os.path.join(scorer.path, "reward_model.json")))["summary"]
    after = summary["held_out_metrics_after"]
    assert after["length_controlled_accuracy"] >= THRESHOLD and after["pair_accuracy"] >= THRESHOLD, after
