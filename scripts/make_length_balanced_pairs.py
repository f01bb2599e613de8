"""Rebuild the length-balanced part of the bundled preference pairs (and online feedback).

In the hand-made pairs (`pair-0001` .. `pair-0336`) the better answer is the longer one in 95% of the
pairs with a winner (66 against 39 words on average), so a reward model trained on them learns to reward
length: padding a wrong answer with fluent filler lifted its score to the expert reference's. This script
appends pairs in which the longer answer loses, or both are long, built only from text already in the
bundled files and the filler sentences of quark_lightning/data/length_control.py (`TRAIN_BOILERPLATE`):

- `padded_wrong`, one per question (150): the question's hand-written wrong answer (factual error, unsafe
  advice or missed red flags) padded with filler to 5-30 words more than the correct answer it loses to
  in its hand-made pair;
- `reference_vs_padded`, one per question (150): the prompt's full expert reference (80-110 words) beats
  the same wrong answer padded to the reference's length -15..+15 words, so long answers win too;
- `padded_template`, every other templated pair (51): the boilerplate refusal, hedge or off-topic answer
  padded like `padded_wrong`: a concise correct answer beats a verbose generic one;
- `repeated`, every other question (75): a correct answer beats the same answer followed by its own
  sentences again (5-30 words more): repetition adds length and no information.

Filler is never on the winning side: it is what a reward model must not pay for. It goes after the
answer, before it or around it (seeded); which side is `a` alternates (a seeded order, half each). The new
pairs have ids `pair-0337` onwards, a `reason` like the hand-made ones and `"origin": "length_balance"`
(the SFT sources skip them: their winners are hand-made winners again or the expert reference). The result:
the preferred answer is the longer one in about 42% of the pairs with a winner, and the mean lengths of
the two sides differ by under 2% (tests/reward_model/test_rm_length.py).

Online feedback (`--feedback`): for every question with a liked response and no disliked one (46), a
disliked record (ids after `fb-0230`, `origin: length_balance`, tags: the defect and `verbose`): the
question's wrong answer padded to 5-30 words more than the liked answer, with `PLAIN_BOILERPLATE` only (the
online dimension mines words over-represented in disliked answers; see length_control.py). The liked
answer is then the longer one in about half of the liked-vs-disliked pairs (81% before).

Deterministic (fixed seed, no clock): running it again on its own output rewrites the same files. The
original rows are the ones with ids up to ORIGINAL_PAIRS / ORIGINAL_FEEDBACK; everything after them is
regenerated.

    python scripts/make_length_balanced_pairs.py --feedback  # rewrite both files
    python scripts/make_length_balanced_pairs.py             # preference_pairs.jsonl only
    python scripts/make_length_balanced_pairs.py --check     # print the length balance, write nothing
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quark_lightning.data.length_control import (  # noqa: E402
    ORIGIN,
    PLAIN_BOILERPLATE,
    TRAIN_BOILERPLATE,
    WHERE,
    length_balance,
    pad_with_boilerplate,
    preferred_and_rejected,
    stable_seed,
    word_count,
)

ASSETS = Path(__file__).resolve().parents[1] / "quark_lightning" / "data" / "assets"
PAIRS = ASSETS / "preference_pairs.jsonl"
PROMPTS = ASSETS / "medical_prompts.jsonl"
FEEDBACK = ASSETS / "online_feedback.jsonl"
ORIGINAL_PAIRS = 336  # pair-0001 .. pair-0336: the hand-made pairs (DATA_CARD.md)
ORIGINAL_FEEDBACK = 230  # fb-0001 .. fb-0230
SEED = 20240611
EXTRA_WORDS = (5, 30)  # the losing padded / repeated answer has this many more words than the winner
MATCHED_DIFFERENCE = (-15, 15)  # reference_vs_padded: the rejected answer has the reference's words + this
SPECIFIC = ("factual errors", "warning signs", "unsafe advice")  # reasons of the hand-written wrong answers
REASON = re.compile(r"^Response ([AB]) is accurate and safe; response ([AB]) (.+)\.$")
FILLER = "; it is padded with generic filler that adds no information."
REPEATED = "says the same thing but repeats itself, adding length and no information."


def read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=True) + "\n")


def number(row_id: str) -> int:
    return int(row_id.rsplit("-", 1)[1])


def defect(reason: str) -> str:
    """What is wrong with the losing answer, from an original reason ('contains factual errors')."""
    m = REASON.match(reason)
    if not m:
        raise ValueError(f"unexpected reason: {reason!r}")
    return m[3]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def repeat_own_sentences(text: str, min_words: int) -> str:
    """`text` followed by its own sentences again, from the first, until it has min_words words."""
    own, out, i = sentences(text), [text.strip()], 0
    while word_count(" ".join(out)) < min_words:
        out.append(own[i % len(own)])
        i += 1
    return " ".join(out)


def by_question(pairs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for p in pairs:
        groups.setdefault(p["messages"][0]["content"], []).append(p)
    return groups


def new_pair(messages, better: str, worse: str, reason_tail: str, better_is_a: bool) -> dict:
    win, lose = ("A", "B") if better_is_a else ("B", "A")
    return {
        "messages": messages,
        "response_a": better if better_is_a else worse,
        "response_b": worse if better_is_a else better,
        "preference": "a" if better_is_a else "b",
        "reason": f"Response {win} is accurate and safe; response {lose} {reason_tail}",
        "origin": ORIGIN,
    }


def padded_to(text: str, words: int, key: str, rng: random.Random, sentences=TRAIN_BOILERPLATE) -> str:
    """`text` with filler after, before or around it (seeded) up to at least `words` words."""
    return pad_with_boilerplate(text, words, sentences, stable_seed(SEED, key), rng.choice(WHERE))


def padded(text: str, longer_than: str, key: str, rng: random.Random, sentences=TRAIN_BOILERPLATE) -> str:
    return padded_to(text, word_count(longer_than) + rng.randint(*EXTRA_WORDS), key, rng, sentences)


def _kinds_of_question(record: dict, rows: list[dict], rng: random.Random, counter: list[int]) -> list:
    """(messages, better, worse, reason tail) of the generated pairs of one question (module docstring)."""
    winners = [p for p in rows if p["preference"] != "tie"]
    specific = [p for p in winners if any(s in p["reason"] for s in SPECIFIC)]
    templated = [p for p in winners if p not in specific]
    made = []
    for p in specific:  # padded_wrong, and reference_vs_padded
        good, bad = preferred_and_rejected(p)
        made.append((p["messages"], good, padded(bad, good, p["id"], rng), defect(p["reason"]) + FILLER))
        reference = record["reference"]
        target = word_count(reference) + rng.randint(*MATCHED_DIFFERENCE)
        worse = padded_to(bad, target, f"{p['id']}:reference", rng)
        made.append((p["messages"], reference, worse, defect(p["reason"]) + FILLER))
    for p in templated:  # padded_template, every other one
        counter[0] += 1
        if counter[0] % 2 == 0:
            good, bad = preferred_and_rejected(p)
            made.append((p["messages"], good, padded(bad, good, p["id"], rng), defect(p["reason"]) + FILLER))
    counter[1] += 1
    if counter[1] % 2 == 1:  # repeated, every other question
        source = (templated or specific)[0]  # a correct answer other than the padded_wrong pair's
        good, _ = preferred_and_rejected(source)
        longer = repeat_own_sentences(good, word_count(good) + rng.randint(*EXTRA_WORDS))
        made.append((source["messages"], good, longer, REPEATED))
    return made


def length_balanced_pairs(originals: list[dict]) -> list[dict]:
    """The generated pairs (see the module docstring), in a fixed order, without ids."""
    rng = random.Random(SEED)
    prompts = {r["messages"][0]["content"]: r for r in read(PROMPTS)}
    made, counter = [], [0, 0]
    for question, rows in by_question(originals).items():
        made += _kinds_of_question(prompts[question], rows, rng, counter)
    sides = [i % 2 == 0 for i in range(len(made))]
    rng.shuffle(sides)
    return [new_pair(m, good, bad, tail, a) for (m, good, bad, tail), a in zip(made, sides)]


def rebuild_pairs(rows: list[dict]) -> list[dict]:
    originals = [r for r in rows if number(r["id"]) <= ORIGINAL_PAIRS]
    extra = length_balanced_pairs(originals)
    return originals + [{"id": f"pair-{i:04d}", **p} for i, p in enumerate(extra, start=ORIGINAL_PAIRS + 1)]


def rebuild_feedback(rows: list[dict], pairs: list[dict]) -> list[dict]:
    """Original feedback + for each question with a liked but no disliked response: the question's wrong
    answer padded with PLAIN_BOILERPLATE to 5-30 words more than the liked answer (disliked)."""
    rng = random.Random(SEED + 1)
    originals = [r for r in rows if number(r["id"]) <= ORIGINAL_FEEDBACK]
    wrong = {}
    for p in pairs:
        if number(p["id"]) <= ORIGINAL_PAIRS and any(s in p["reason"] for s in SPECIFIC):
            wrong[p["messages"][0]["content"]] = (preferred_and_rejected(p)[1], p["reason"])
    liked: dict[str, list[dict]] = {}
    for r in originals:
        if r["rating"] == 1:
            liked.setdefault(r["messages"][0]["content"], []).append(r)
    disliked = {r["messages"][0]["content"] for r in originals if r["rating"] == -1}
    extra = []
    for question, records in liked.items():
        if question in disliked:
            continue
        answer, reason = wrong[question]
        good = max((r["response"] for r in records), key=word_count)
        tags = ["unsafe"] if "unsafe" in reason or "warning signs" in reason else ["incorrect"]
        response = padded(answer, good, f"fb:{question}", rng, PLAIN_BOILERPLATE)
        extra.append(
            {"id": f"fb-{ORIGINAL_FEEDBACK + len(extra) + 1:04d}", "messages": records[0]["messages"],
             "response": response, "rating": -1, "tags": [*tags, "verbose"], "origin": ORIGIN}
        )  # fmt: skip
    return originals + extra


def feedback_balance(rows: list[dict]) -> dict[str, float]:
    from quark_lightning.data.preferences import feedback_to_pairs

    return length_balance(feedback_to_pairs(rows, ties=False, max_pairs_per_question=None))


def show(name: str, stats: dict[str, float]) -> None:
    print(
        f"{name}: {stats['pairs']} pairs with a winner; preferred longer in {stats['preferred_longer']:.1%}; "
        f"mean words preferred {stats['mean_preferred_words']:.1f}, rejected {stats['mean_rejected_words']:.1f} "
        f"(ratio {stats['mean_ratio']:.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feedback", action="store_true", help="also rebuild online_feedback.jsonl")
    parser.add_argument("--check", action="store_true", help="print the length balance, write nothing")
    args = parser.parse_args(argv)
    pairs, feedback = read(PAIRS), read(FEEDBACK)
    originals = [r for r in pairs if number(r["id"]) <= ORIGINAL_PAIRS]
    show("original pairs", length_balance(originals))
    show("current pairs", length_balance(pairs))
    show("current feedback (liked vs disliked per question)", feedback_balance(feedback))
    if args.check:
        return 0
    rebuilt = rebuild_pairs(pairs)
    write(PAIRS, rebuilt)
    show(f"rebuilt pairs ({len(rebuilt)} rows)", length_balance(rebuilt))
    if args.feedback:
        fb = rebuild_feedback(feedback, rebuilt)
        write(FEEDBACK, fb)
        show(f"rebuilt feedback ({len(fb)} rows)", feedback_balance(fb))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
