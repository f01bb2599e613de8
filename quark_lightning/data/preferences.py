"""Reward-model data: preference pairs and online feedback (docs/design.md section 3), validated.

Preference pairs (ORM)::

    {"id": "pp-001", "messages": [{"role": "user", "content": "..."}],
     "response_a": "...", "response_b": "...", "preference": "a" | "b" | "tie"}

Online feedback (users' like / dislike of deployed answers)::

    {"id": "fb-001", "messages": [...], "response": "...", "rating": 1 | -1, "tags": ["verbose", ...]}

`id` is optional in both (rows without one are named `FILE:LINE`); when present it must be unique.
Extra keys are kept. Every bad row is reported as `FILE:LINE: field 'x': what is wrong` and all of a
file's problems are raised at once as `DataValidationError`, before any model is built.

From feedback to pairs (`feedback_to_pairs`), per question (same `messages`, compared by role and
stripped content; identical responses are counted once):

- every disliked (−1) response is paired with every liked (+1) response to that question as a
  preferred pair (the liked one wins);
- optionally (`ties=True`), two responses with the same rating form a tie pair: users reacted to them
  the same way, which is the online analogue of "no significant difference";
- at most `max_pairs_per_question` pairs of each kind per question (a seeded sample), so a popular
  question does not dominate; which response is `a` is a seeded coin flip.

The held-out split (`split_by_question`) is made by question, so no question (and no response) of the
held-out pairs is seen in training.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterable
from typing import Any

from quark_lightning.data import ASSETS
from quark_lightning.data.canary import refuse_evaluation_data
from quark_lightning.data.schema import (
    DataValidationError,
    check_id,
    check_messages,
    check_string_list,
    check_text,
    read_jsonl,
    show,
)

BUNDLED_PAIRS = ASSETS / "preference_pairs.jsonl"
BUNDLED_FEEDBACK = ASSETS / "online_feedback.jsonl"
PREFERENCES = ("a", "b", "tie")
RATINGS = (1, -1)


def resolve(path: str | None, bundled: os.PathLike) -> str:
    """`bundled` (or an empty value) names the bundled asset; anything else is used as given."""
    return str(bundled) if path in ("bundled", "", None) else str(path)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_id(record: dict[str, Any]) -> list[str]:
    return check_id(record["id"], "id", "pp-001") if "id" in record else []


def validate_pair(record: Any) -> list[str]:
    """Problems of one preference-pair record, each starting with `field '...'`."""
    if not isinstance(record, dict):
        return [f"the row must be a JSON object, got {type(record).__name__}"]
    errs = _check_id(record) + check_messages(record.get("messages"))
    for key in ("response_a", "response_b"):
        if key not in record:
            errs.append(f"field '{key}': missing (the two responses to compare)")
        else:
            errs += check_text(record[key], key)
    pref = record.get("preference")
    if pref not in PREFERENCES:
        errs.append(
            f"field 'preference': got {show(pref)}, expected one of 'a', 'b', 'tie' "
            "('a': response_a is better, 'tie': no significant difference)"
        )
    elif (
        pref != "tie"
        and _nonempty_str(record.get("response_a"))
        and _nonempty_str(record.get("response_b"))
        and record["response_a"].strip() == record["response_b"].strip()
    ):
        errs.append(
            f"field 'preference': got {pref!r} but response_a and response_b are identical; use 'tie'"
        )
    return errs


def validate_feedback(record: Any) -> list[str]:
    """Problems of one online-feedback record, each starting with `field '...'`."""
    if not isinstance(record, dict):
        return [f"the row must be a JSON object, got {type(record).__name__}"]
    errs = _check_id(record) + check_messages(record.get("messages"))
    if "response" not in record:
        errs.append("field 'response': missing (the answer the user reacted to)")
    else:
        errs += check_text(record["response"], "response")
    rating = record.get("rating")
    if isinstance(rating, bool) or rating not in RATINGS:
        errs.append(f"field 'rating': got {show(rating)}, expected 1 (liked) or -1 (disliked)")
    errs += check_string_list(record.get("tags", []), "tags", '["verbose", "unsafe"]')
    return errs


def _validate_file(path: str, validate: Callable[[Any], list[str]], what: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        raise DataValidationError([f"{path}: file not found (point the data path at an existing JSONL file)"])
    if not path.endswith((".jsonl", ".json")):
        raise DataValidationError([f"{path}: unsupported file type; use JSON Lines (.jsonl)"])
    records, errors, seen = [], [], {}
    for line, record in read_jsonl(path):
        problems = validate(record)
        rid = record.get("id") if isinstance(record, dict) else None
        if not problems and rid is not None and rid in seen:
            problems = [f"field 'id': {rid!r} already used on line {seen[rid]}; ids must be unique"]
        errors += [f"{path}:{line}: {p}" for p in problems]
        if not problems:
            if rid is None:
                record = dict(record, id=f"{os.path.basename(path)}:{line}")
            else:
                seen[rid] = line
            records.append(record)
    if errors:
        raise DataValidationError(errors)
    if not records:
        raise DataValidationError(
            [f"{path}: no {what} found; the file is empty (write one JSON object a line)"]
        )
    refuse_evaluation_data(records, f"{what} ({path})")  # pairs and feedback train the reward model
    return records


def load_preference_pairs(path: str = "bundled") -> list[dict[str, Any]]:
    """Validated preference pairs; `bundled` is quark_lightning/data/assets/preference_pairs.jsonl."""
    return _validate_file(resolve(path, BUNDLED_PAIRS), validate_pair, "preference pairs")


def load_online_feedback(path: str = "bundled") -> list[dict[str, Any]]:
    """Validated online-feedback records; `bundled` is quark_lightning/data/assets/online_feedback.jsonl."""
    return _validate_file(resolve(path, BUNDLED_FEEDBACK), validate_feedback, "feedback records")


def question_key(messages: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    """Identity of a question: its turns' roles and stripped contents."""
    return tuple((m["role"], m["content"].strip()) for m in messages)


def split_by_question(
    items: list[dict[str, Any]], val_fraction: float, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded (train, held_out) split by question: about val_fraction of the questions are held out."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(question_key(item["messages"]), []).append(item)
    if val_fraction <= 0:
        return list(items), []
    keys = sorted(groups)
    if len(keys) < 2:
        raise DataValidationError(
            ["the data holds a single question; a held-out split by question needs at least 2 questions"]
        )
    random.Random(seed).shuffle(keys)
    n_val = min(len(keys) - 1, max(1, round(val_fraction * len(keys))))
    held = set(keys[:n_val])
    train = [it for it in items if question_key(it["messages"]) not in held]
    val = [it for it in items if question_key(it["messages"]) in held]
    return train, val


def _sample(pairs: list, limit: int | None, rng: random.Random) -> list:
    return pairs if limit is None or len(pairs) <= limit else rng.sample(pairs, limit)


def feedback_to_pairs(
    records: Iterable[dict[str, Any]],
    ties: bool = True,
    max_pairs_per_question: int | None = 16,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Preference (and optionally tie) pairs from online feedback; see the module docstring."""
    rng = random.Random(seed)
    groups: dict[tuple, dict[str, Any]] = {}
    for r in records:
        g = groups.setdefault(question_key(r["messages"]), {"messages": r["messages"], 1: {}, -1: {}})
        g[r["rating"]].setdefault(r["response"].strip(), r)  # identical responses count once
    pairs = []
    for g in groups.values():
        liked, disliked = list(g[1].values()), list(g[-1].values())
        preferred = _sample(list(itertools.product(liked, disliked)), max_pairs_per_question, rng)
        tied = []
        if ties:
            tied = list(itertools.combinations(liked, 2)) + list(itertools.combinations(disliked, 2))
            tied = _sample(tied, max_pairs_per_question, rng)
        for (win, lose), label in [(p, "win") for p in preferred] + [(p, "tie") for p in tied]:
            flip = rng.random() < 0.5
            a, b = (lose, win) if flip else (win, lose)
            pref = "tie" if label == "tie" else ("b" if flip else "a")
            pairs.append(
                {
                    "id": f"{a['id']}~{b['id']}",
                    "messages": g["messages"],
                    "response_a": a["response"],
                    "response_b": b["response"],
                    "preference": pref,
                    "tags_a": a.get("tags", []),
                    "tags_b": b.get("tags", []),
                }
            )
    return pairs


def pair_texts(items: Iterable[dict[str, Any]]) -> list[str]:
    """Every message and response text (the tiny tokenizer's training corpus)."""
    texts = []
    for it in items:
        texts += [m["content"] for m in it["messages"]]
        texts += [it[k] for k in ("response_a", "response_b", "response") if k in it]
    return texts


def describe(pairs: list[dict[str, Any]]) -> str:
    n_tie = sum(p["preference"] == "tie" for p in pairs)
    share = f"{n_tie / len(pairs):.0%}" if pairs else "n/a"
    questions = len({question_key(p["messages"]) for p in pairs})
    return (
        f"{len(pairs)} pairs ({len(pairs) - n_tie} preferred, {n_tie} ties = {share}; {questions} questions)"
    )


__all__ = [
    "BUNDLED_FEEDBACK",
    "BUNDLED_PAIRS",
    "describe",
    "feedback_to_pairs",
    "load_online_feedback",
    "load_preference_pairs",
    "pair_texts",
    "split_by_question",
]
