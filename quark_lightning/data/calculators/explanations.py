"""The expert reference: medcalc-bench's worked explanation with known misprints and line wrapping fixed."""

from __future__ import annotations

import re

GLOBAL_FIXES = (
    ("\\n", "\n"),
    ("Albmumin", "Albumin"),
    ("cholestrol", "cholesterol"),
    ("The patients concentration", "The patient's concentration"),
    ("total body weight percentage", "total body water percentage"),
    ("The patient's is a ", "The patient is "),
    ("free body water deficit", "free water deficit"),
    ("male's", "males"),
    ("For patient's", "For patients"),
    ("the the ", "the "),
    ("The mean average pressure", "The mean arterial pressure"),
)


def _is_continuation(previous: str, line: str) -> bool:
    """The package wraps its criteria tables mid-sentence; such a line continues the previous one."""
    return (
        bool(previous)
        and bool(line)
        and (previous.endswith((",", "=", ":")) or line[0] in "=(+" or line[0].islower())
    )


def clean_explanation(text: str, fixes: tuple[tuple[str, str], ...] = ()) -> str:
    """The package's explanation with known misprints fixed and its source-code line wrapping undone."""
    for old, new in (*GLOBAL_FIXES, *fixes):
        text = text.replace(old, new)
    lines: list[str] = []
    for line in (" ".join(raw.split()) for raw in text.splitlines()):
        if lines and _is_continuation(lines[-1], line):
            lines[-1] += " " + line
        else:
            lines.append(line)
    text = re.sub(r"(?<=[A-Za-z0-9)^])\.(?=[A-Z][a-z])", ". ", "\n".join(lines))
    return re.sub(r"\n{3,}", "\n\n", text).strip()
