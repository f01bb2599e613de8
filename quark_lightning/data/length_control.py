"""Content-free boilerplate, and padding an answer with it: length control for reward models.

A reward model trained on pairs where the better answer is usually the longer one learns to reward
length. Two things here keep that in check, and both use the sentences below, kept in this one place:

- `quark_lightning/data/assets/make_length_balanced_pairs.py` builds the length-balanced pairs of the
  bundled data: among them, poor answers padded with `TRAIN_BOILERPLATE` until they are longer than the
  good answer they lose to.
- the reward-model stage's held-out evaluation (`length_controlled_accuracy`,
  quark_lightning/reward_model/heldout.py) pads each held-out pair's rejected answer with
  `EVAL_BOILERPLATE` to at least the preferred answer's length + 50 words and counts how often the
  padded answer still scores below the preferred one. `EVAL_BOILERPLATE` never appears in the training
  data, so the check measures whether the model ignores empty filler, not whether it memorised
  `TRAIN_BOILERPLATE`.

The sentences are fluent, generic and medically empty: no advice, no facts, no words the bundled
rubrics look for (tests/reward_model/test_rm_length.py checks that no rubric pattern of the bundled prompts matches
any of them). Padding is deterministic: the same text, length and seed give the same result.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

# Filler of the generated training data: PLAIN avoids the words good answers use often (health, medical,
# important, feel, people, ...), HEALTH is in the register of a health answer. The online-feedback records
# use PLAIN only: the online dimension mines word n-grams over-represented in disliked answers
# (scorers/pattern_mining.py), and filler there must not make it penalise words like "medical".
PLAIN_BOILERPLATE: tuple[str, ...] = (
    "Your wellbeing matters, and it makes sense to pay attention to your overall situation.",
    "Every situation is unique, and general points cannot cover every individual detail.",
    "Several factors, including age, general fitness and lifestyle, can play a part in situations like this.",
    "Knowledge in this area continues to develop as new research is published.",
    "Clinicians consider the whole picture when they look at questions like this.",
    "Understanding your own body is a valuable part of looking after yourself.",
    "Approaches vary, and what is right depends on the individual and their circumstances.",
    "Plenty of readers have questions about wellbeing and everyday routines.",
    "Overall wellbeing involves many aspects, including physical, mental and emotional balance.",
    "Each individual is unique, and general guidance is only part of the picture.",
    "Circumstances can change, and experiences differ from one individual to another.",
    "There are many resources that describe topics like this in more detail.",
    "Paying attention to your own wellbeing from day to day is part of looking after yourself.",
    "Guidance in this area is based on evidence, and it is updated as more is learned.",
    "The body is complex, and many systems combine in a delicate balance.",
    "Individual needs and preferences are a central part of any decision.",
    "Sound guidance helps overall wellbeing in a variety of ways.",
    "Questions like this are an ordinary part of managing everyday wellbeing.",
    "It works best when each person involved is informed and included.",
    "This is an area where individual circumstances can make a real difference.",
)
HEALTH_BOILERPLATE: tuple[str, ...] = (
    "Your health and wellbeing are important, and it makes sense to pay attention to how you feel.",
    "Many factors, including age, general health and lifestyle, can play a part in situations like this.",
    "Medical knowledge in this area continues to develop as new research is published.",
    "Healthcare professionals consider the whole picture when they look at questions like this.",
    "Understanding your health is a valuable part of looking after yourself.",
    "Plenty of people have questions about their health and their general wellbeing.",
    "Good health involves many aspects, including physical, mental and emotional wellbeing.",
    "Health can change, and experiences differ from person to person.",
    "Medical guidance is based on evidence, and it is updated as more is learned.",
    "People's needs and preferences are an important part of any health decision.",
    "Health care works best when people feel informed and involved.",
    "Every person is unique, and general information cannot cover every individual detail.",
)
TRAIN_BOILERPLATE: tuple[str, ...] = PLAIN_BOILERPLATE + HEALTH_BOILERPLATE

EVAL_BOILERPLATE: tuple[str, ...] = (
    "Health is influenced by a wide range of personal and social factors.",
    "Each person's history and circumstances shape what is most relevant for them.",
    "Clinical practice in this area draws on research, experience and careful judgement.",
    "Being informed about your health can help you feel more confident and in control.",
    "Bodily changes can carry different meanings in different people and at different moments.",
    "Wellbeing has many dimensions, and they often affect one another.",
    "Guidelines are written to promote good care, and they are revised every so often.",
    "Many people find it helpful to learn more about how the body works.",
    "There is a broad range of experiences among people facing similar health questions.",
    "Health decisions are often easier when the relevant information is easy to follow.",
    "Conditions affect people in individual ways.",
    "Looking after your health is an ongoing process rather than a single event.",
    "Medical science continues to improve our understanding of topics like this one.",
    "Individual factors such as age and general health are always part of the picture.",
    "Care works well when it is shaped around the person receiving it.",
    "Good communication is an important part of any healthcare relationship.",
    "It is natural for questions about health to come up now and then.",
    "The human body adapts and responds in many different ways.",
    "Reliable information is an important foundation for looking after yourself.",
    "Every situation in healthcare has its own particular details and context.",
)

WHERE = ("end", "start", "both")
ORIGIN = "length_balance"  # the `origin` of the generated pairs and feedback records (never SFT examples)
CONTROL_EXTRA_WORDS = 50  # the padded rejected answer has at least the preferred one's words + this


def word_count(text: str) -> int:
    """Words of a text: its whitespace-separated tokens."""
    return len(text.split())


def stable_seed(*parts: Any) -> int:
    """A seed from strings and numbers that is the same in every process (unlike `hash`)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def filler(words: int, sentences: Sequence[str] = EVAL_BOILERPLATE, seed: int = 0) -> list[str]:
    """Sentences (a seeded order of `sentences`, repeated from the start when used up) whose words add
    up to at least `words`; [] for words <= 0."""
    order = list(sentences)
    random.Random(seed).shuffle(order)
    out: list[str] = []
    total, i = 0, 0
    while total < words:
        sentence = order[i % len(order)]
        out.append(sentence)
        total += word_count(sentence)
        i += 1
    return out


def pad_with_boilerplate(
    text: str,
    min_words: int,
    sentences: Sequence[str] = EVAL_BOILERPLATE,
    seed: int = 0,
    where: str = "end",
) -> str:
    """`text` with boilerplate sentences added until it has at least `min_words` words (unchanged when it
    has them already): after it (`end`), before it (`start`) or half before and half after (`both`)."""
    if where not in WHERE:
        raise ValueError(f"where: got {where!r}, expected one of {list(WHERE)}")
    text = text.strip()
    pad = filler(min_words - word_count(text), sentences, seed)
    if not pad:
        return text
    if where == "end":
        return " ".join([text, *pad])
    if where == "start":
        return " ".join([*pad, text])
    half = len(pad) // 2
    return " ".join([*pad[:half], text, *pad[half:]])


def preferred_and_rejected(pair: dict[str, Any]) -> tuple[str, str] | None:
    """(preferred, rejected) response of a pair with a winner; None for a tie."""
    if pair["preference"] == "a":
        return pair["response_a"], pair["response_b"]
    if pair["preference"] == "b":
        return pair["response_b"], pair["response_a"]
    return None


def length_control_pairs(
    pairs: Iterable[dict[str, Any]],
    extra_words: int = CONTROL_EXTRA_WORDS,
    sentences: Sequence[str] = EVAL_BOILERPLATE,
) -> list[dict[str, Any]]:
    """One pair per pair with a winner (ties are left out): `response_a` is the preferred answer as it is,
    `response_b` the rejected answer with `sentences` appended until it has at least the preferred
    answer's words + `extra_words` (seeded by the pair's id), `preference` "a". A reward model's pair
    accuracy on these is its length-controlled accuracy: how often a worse answer made longer than the
    better one with empty filler still scores below it (a model that only rewards length gets 0)."""
    out = []
    for i, pair in enumerate(pairs):
        sides = preferred_and_rejected(pair)
        if sides is None:
            continue
        better, worse = sides
        rid = pair.get("id", i)
        padded = pad_with_boilerplate(worse, word_count(better) + extra_words, sentences, stable_seed(rid))
        out.append(
            {"id": f"{rid}~padded", "messages": pair["messages"], "response_a": better, "response_b": padded,
             "preference": "a"}
        )  # fmt: skip
    return out


def length_balance(pairs: Iterable[dict[str, Any]]) -> dict[str, float]:
    """How much length tells about preference in pairs with a winner (ties are left out):
    `preferred_longer` share of pairs where the preferred answer has more words, `rejected_longer`,
    mean words of each side and `mean_ratio` = mean preferred / mean rejected."""
    rows = [pr for pr in map(preferred_and_rejected, pairs) if pr is not None]
    if not rows:
        nan = float("nan")
        return {"pairs": 0, "preferred_longer": nan, "rejected_longer": nan, "mean_preferred_words": nan,
                "mean_rejected_words": nan, "mean_ratio": nan}  # fmt: skip
    pref = [word_count(p) for p, _ in rows]
    rej = [word_count(r) for _, r in rows]
    n = len(rows)
    return {
        "pairs": n,
        "preferred_longer": sum(p > r for p, r in zip(pref, rej)) / n,
        "rejected_longer": sum(r > p for p, r in zip(pref, rej)) / n,
        "mean_preferred_words": sum(pref) / n,
        "mean_rejected_words": sum(rej) / n,
        "mean_ratio": sum(pref) / max(1, sum(rej)),
    }


__all__ = [
    "CONTROL_EXTRA_WORDS",
    "EVAL_BOILERPLATE",
    "HEALTH_BOILERPLATE",
    "ORIGIN",
    "PLAIN_BOILERPLATE",
    "TRAIN_BOILERPLATE",
    "filler",
    "length_balance",
    "length_control_pairs",
    "pad_with_boilerplate",
    "preferred_and_rejected",
    "stable_seed",
    "WHERE",
    "word_count",
]
