"""Reading a judge's reply: a verdict, or the reason it is none (which makes the sample a failure).

A reply that does not parse is not silently read as "no": the sample is reported as failed
(`ScoreResult.failures`), so the guard counts it and a gate dimension vetoes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from quark_lightning.judges.client import JudgeReply

_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    met: bool | None  # None: no verdict (see `error`)
    explanation: str = ""
    error: str | None = None


def parse_yes_no(text: str) -> bool | None:
    """A leading YES or NO (any case, after punctuation or spaces); anything else -> None."""
    m = _YES_NO.match(text)
    return None if m is None else m.group(1).lower() == "yes"


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (inside ```json fences or bare), or None."""
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    start = candidate.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(candidate[start:])
        except ValueError:
            start = candidate.find("{", start + 1)
            continue
        return obj if isinstance(obj, dict) else None
    return None


def unparsed(reply: str, expected: str) -> str:
    return f"judge reply does not parse as {expected}: {reply.strip()[:80]!r}"


def yes_no_verdict(reply: JudgeReply) -> Verdict:
    if not reply.ok:
        return Verdict(None, error=reply.error)
    met = parse_yes_no(reply.text)
    if met is None:
        return Verdict(None, error=unparsed(reply.text, "YES or NO"))
    return Verdict(met, explanation=reply.text.strip()[:200])


def criteria_met_verdict(reply: JudgeReply) -> Verdict:
    """HealthBench's grader reply: a JSON object with a boolean `criteria_met` and an `explanation`."""
    if not reply.ok:
        return Verdict(None, error=reply.error)
    obj = parse_json_object(reply.text)
    if obj is None or not isinstance(obj.get("criteria_met"), bool):
        return Verdict(
            None, error=unparsed(reply.text, 'JSON {"explanation": ..., "criteria_met": true|false}')
        )
    return Verdict(obj["criteria_met"], explanation=str(obj.get("explanation", ""))[:300])
