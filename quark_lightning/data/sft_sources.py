"""Supervised data for the pipeline's two SFT stages, as (messages, answer) examples.

Interpretation of the paper's first two stages (its body is not public):

- **Foundational capability training** learns to answer medical questions acceptably at all. Its data
  here are general-quality answers that are not the expert references: the preferred response of every
  non-tie preference pair (`preferred_responses`) and every liked response of the online-feedback log
  (`liked_feedback`).
- **Expert behaviour cloning** imitates expert demonstrations: the prompts' expert reference answers
  (`expert_references`) and medcalc-bench's worked calculator explanations (`calculator_explanations`,
  step by step, ending with the exact answer).

Every source drops the questions of the RL held-out split (`exclude`), so the closed loop's evaluation
of the cloned policy and of the RL policy is on questions no stage trained on.

An example is `{"messages": [...], "reference": "the answer to learn", "source": NAME}`; user files in
the prompt format (any row with a `reference`) work through `prompts_file:<path>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quark_lightning.data.calculators import generate_calculator_prompts
from quark_lightning.data.canary import refuse_evaluation_data
from quark_lightning.data.datamodule import load_prompt_records
from quark_lightning.data.length_control import ORIGIN as LENGTH_BALANCE
from quark_lightning.data.preferences import load_online_feedback, load_preference_pairs, question_key
from quark_lightning.infra.errors import ConfigError

Example = dict[str, Any]


def _example(messages: list[dict[str, str]], answer: str, source: str, id_: str | None) -> Example:
    return {"id": id_, "messages": messages, "reference": answer, "source": source}


def preferred_responses(path: str = "bundled", **_: Any) -> list[Example]:
    """The winning response of every non-tie preference pair, once per distinct question/answer. Pairs
    generated for length balance (`origin: length_balance`, whose winners are hand-made winners again or
    the expert reference) are not demonstrations and are left out."""
    out, seen = [], set()
    for p in load_preference_pairs(path):
        if p["preference"] == "tie" or p.get("origin") == LENGTH_BALANCE:
            continue
        answer = p["response_a"] if p["preference"] == "a" else p["response_b"]
        key = (question_key(p["messages"]), answer.strip())
        if key not in seen:
            seen.add(key)
            out.append(_example(p["messages"], answer, "preferred_responses", p.get("id")))
    return out


def liked_feedback(path: str = "bundled", **_: Any) -> list[Example]:
    """Every response users rated +1 in the online-feedback log (records generated for length balance,
    `origin: length_balance`, left out)."""
    return [
        _example(r["messages"], r["response"], "liked_feedback", r.get("id"))
        for r in load_online_feedback(path)
        if r["rating"] == 1 and r.get("origin") != LENGTH_BALANCE
    ]


def expert_references(train_records: list[dict[str, Any]], **_: Any) -> list[Example]:
    """Expert reference answers of the RL training prompts (calculator prompts excluded: see below)."""
    return [
        _example(r["messages"], r["reference"], "expert_references", r.get("id"))
        for r in train_records
        if isinstance(r.get("reference"), str) and r["reference"].strip() and not r.get("calculator")
    ]


def calculator_explanations(n: int = 64, seed: int = 1000, **_: Any) -> list[Example]:
    """Worked medcalc-bench explanations of `n` freshly generated calculator questions.

    The seed differs from the RL data's calculator seed, so the RL held-out calculator questions are not
    among them (their vignettes are sampled anew)."""
    return [
        _example(p["messages"], p["reference"], "calculator_explanations", p["id"])
        for p in generate_calculator_prompts(n, seed=seed)
    ]


def prompts_file(path: str, **_: Any) -> list[Example]:
    """Rows of a user's prompt-format file (JSONL / Parquet / hub) that carry a `reference`."""
    records = load_prompt_records(path, require_reference=True)
    refuse_evaluation_data(records, f"SFT source prompts_file ({path})")
    return [_example(r["messages"], r["reference"], f"prompts_file:{path}", r.get("id")) for r in records]


SOURCES: dict[str, Callable[..., list[Example]]] = {
    "preferred_responses": preferred_responses,
    "liked_feedback": liked_feedback,
    "expert_references": expert_references,
    "calculator_explanations": calculator_explanations,
    "prompts_file": prompts_file,
}


def load_sft_examples(
    sources: dict[str, dict[str, Any] | None],
    train_records: list[dict[str, Any]],
    exclude: list[dict[str, Any]],
    where: str,
) -> tuple[list[Example], dict[str, int]]:
    """Examples of every configured source minus held-out questions; and the count kept per source.

    `sources` maps a source name to its options (`{}` or null for the defaults), e.g.
    `{"expert_references": {}, "calculator_explanations": {"n": 64}}`.
    """
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ConfigError(
            f"{where}.sources: unknown source(s) {unknown}; expected some of {sorted(SOURCES)}. "
            f"Fix: remove them or rename to a known source"
        )
    held_out = {question_key(r["messages"]) for r in exclude}
    examples: list[Example] = []
    counts: dict[str, int] = {}
    seen: set[tuple] = set()
    for name, options in sources.items():
        if options is False:
            continue
        rows = SOURCES[name](train_records=train_records, **dict(options or {}))
        kept = 0
        for ex in rows:
            key = (question_key(ex["messages"]), ex["reference"].strip())
            if question_key(ex["messages"]) in held_out or key in seen:
                continue
            seen.add(key)
            examples.append(ex)
            kept += 1
        counts[name] = kept
    if not examples:
        raise ConfigError(
            f"{where}.sources: no training example left (sources {sorted(sources)}). Fix: add a source "
            "with data, or lower data.val_fraction"
        )
    return examples, counts
