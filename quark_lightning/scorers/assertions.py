"""Atomic assertions: split an answer into checkable statements and read their numbers and polarity.

Interpretation (GARM step 1, "split the response into atomic assertions"; the paper gives no procedure):

- sentences: split on . ! ? followed by a capital or digit, on new lines and on list bullets; questions
  are dropped (they assert nothing);
- clauses: a sentence is split further on "; " always, and on ", and" / " and " / " but " / " whereas "
  / " although " only when both sides have at least `MIN_CLAUSE_WORDS` words, so
  "paracetamol and ibuprofen" or "but not colds" stay with their subject; " and " between two numbers
  ("between 1 and 2 weeks") never splits;
- quantities: numbers with a known unit, converted to one canonical unit per dimension (mass -> g,
  volume -> ml, time -> day, months and years -> year, temperature -> C, pressure -> mmHg, % ...),
  ranges ("1 to 2 weeks", "7-10 days", "between 1 and 2 weeks", "500 mg to 1 g") and blood-pressure
  readings ("140/90 mmHg", or "140/90" in a blood-pressure clause: value = systolic, second =
  diastolic). A bare "degrees" or "°" is read as Celsius;
- negation: a clause is negated when it holds any negation cue (not, never, no, don't, avoid, cannot,
  contraindicated, rarely, unnecessary, ...). Bound phrases that limit a number ("no more than 4 g",
  "do not exceed 4 g") are not negations. Any cue counts (not parity): "No, you should not ..." reads
  as negated;
- warnings: a clause with a harm cue (overdose, toxic, damage, dangerous, risk, side effects, can
  cause, ...) warns against what it names ("8 g a day can cause liver damage" does not recommend 8 g);
- hedges: "without", "unless", "except", "whether" mark a clause whose yes/no reading is unsure
  ("colds get better without antibiotics"); the rule verifier gives no polarity verdict on them.

Everything here is a pure function of the text; the verifiers decide what the assertions mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from quark_lightning.data.units import UNIT_FORMS, canonical_unit

MIN_CLAUSE_WORDS = 3

_WORD_NUMBERS = "one two three four five six seven eight nine ten eleven twelve".split()
_NUM = (
    r"(?:(?<![a-z\d.,])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)|\b(?:"
    + "|".join(_WORD_NUMBERS)
    + r")\b)"
)
_UNIT = (
    "(?:" + "|".join(re.escape(f) for f in sorted(UNIT_FORMS, key=len, reverse=True)) + r")(?![a-z0-9µμ²])"
)
_SINGLE = re.compile(rf"(?P<lo>{_NUM})[\s-]*(?P<unit>{_UNIT})")
_RANGE_TO = re.compile(
    rf"(?P<lo>{_NUM})[\s-]*(?P<lo_unit>{_UNIT})?\s*(?:to|-|–|—)\s*(?P<hi>{_NUM})[\s-]*(?P<unit>{_UNIT})"
)
_RANGE_BETWEEN = re.compile(
    rf"\bbetween\s+(?P<lo>{_NUM})[\s-]*(?P<lo_unit>{_UNIT})?\s+and\s+(?P<hi>{_NUM})[\s-]*(?P<unit>{_UNIT})"
)
_PRESSURE = re.compile(r"\b(?P<sys>\d{2,3})\s*/\s*(?P<dia>\d{2,3})\b(?P<unit>\s*mm\s*hg)?")
_BP_CONTEXT = re.compile(r"\b(blood pressure|bp)\b")

_NOT = r"(?:no|not|never|\w+n't)"
_BOUND_PHRASES = re.compile(  # "do not take more than 8 g" states a bound of 8 g; it negates nothing
    rf"\b{_NOT}\s+(?:\w+\s+){{0,2}}?(?:more|less|fewer|longer|shorter|higher|lower|greater|later)\s+than\b"
    rf"|\b{_NOT}\s+(?:\w+\s+){{0,2}}?(?:exceed|exceeding|over|above|beyond)\b"
)
_NEGATION = re.compile(
    r"\b(?:not|never|no|none|nor|neither|cannot|avoid|avoided|avoiding|contraindicated|ineffective|useless"
    r"|unnecessary|rarely|seldom|hardly|unlikely|myth|untrue)\b"
    r"|\b\w+n't\b|\bcan\s*not\b"
)
_WARNINGS = re.compile(
    r"\b(?:overdoses?|overdosing|toxic|toxicity|poisoning|damage|dangerous|harmful|harms?|fatal|deadly|lethal"
    r"|risks?|side[\s-]effects?)\b|\b(?:can|could|may|might|will)\s+cause\b"
)
_HEDGES = re.compile(r"\b(?:without|unless|except|whether)\b")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n+")
_ABBREVIATIONS = ("dr.", "mr.", "mrs.", "ms.", "prof.", "st.", "vs.", "approx.", "e.g.", "i.e.", "no.")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|#+)\s+")
_CLAUSE_BREAK = re.compile(r",?\s+(?:but|whereas|although)\s+|,?\s+(?<!\d\s)and\s+(?!\d)", re.IGNORECASE)


@dataclass(frozen=True)
class Quantity:
    """A number with a unit, in the canonical unit of its dimension (see `canonical_unit`)."""

    value: float  # low end of a range, or the single value
    high: float  # high end of a range; equal to `value` for a single number
    unit: str  # canonical unit: g, ml, day, year, C, mmHg, %, or the unit as written for other dimensions
    raw: str  # the text as written, e.g. "1 to 2 weeks"
    second: float | None = None  # the diastolic number of a "140/90 mmHg" reading
    start: int = 0  # character span in the text it was read from
    end: int = 0


@dataclass(frozen=True)
class Assertion:
    text: str  # the clause as written (trimmed)
    lower: str  # lowercase text, what matching runs on
    negated: bool
    quantities: tuple[Quantity, ...]
    hedged: bool = False  # "without", "unless", "except", "whether": its polarity is not a plain yes or no
    warns: bool = False  # "8 g can cause liver damage": the clause warns against what it names


def _number(text: str) -> float:
    text = text.strip()
    if text in _WORD_NUMBERS:
        return float(_WORD_NUMBERS.index(text) + 1)
    return float(text.replace(",", ""))


def _range_quantity(m: re.Match[str]) -> Quantity | None:
    hi, unit = canonical_unit(_number(m["hi"]), m["unit"])
    lo, lo_unit = canonical_unit(_number(m["lo"]), m["lo_unit"] or m["unit"])
    if lo_unit != unit:
        return None
    return Quantity(min(lo, hi), max(lo, hi), unit, m.group(0).strip())


def _single_quantity(m: re.Match[str]) -> Quantity:
    value, unit = canonical_unit(_number(m["lo"]), m["unit"])
    return Quantity(value, value, unit, m.group(0).strip())


def _pressure_quantity(m: re.Match[str], text: str) -> Quantity | None:
    if not m["unit"] and not _BP_CONTEXT.search(text):
        return None  # "12/05" without mmHg or a blood-pressure context is not a reading
    systolic = float(m["sys"])
    return Quantity(systolic, systolic, "mmHg", m.group(0).strip(), second=float(m["dia"]))


def extract_quantities(text: str) -> tuple[Quantity, ...]:
    """Numbers with units in `text`, in order of appearance; each span is read once (longest form first)."""
    written, text = text, text.lower()
    if len(written) != len(text):  # a few Unicode letters change length when lowercased
        written = text
    found: list[tuple[int, Quantity]] = []
    taken: list[tuple[int, int]] = []

    def free(m: re.Match[str]) -> bool:
        return all(m.end() <= a or m.start() >= b for a, b in taken)

    readers = [
        (_PRESSURE, lambda m: _pressure_quantity(m, text)),
        (_RANGE_BETWEEN, _range_quantity),
        (_RANGE_TO, _range_quantity),
        (_SINGLE, _single_quantity),
    ]
    for pattern, read in readers:
        for m in pattern.finditer(text):
            if free(m) and (q := read(m)) is not None:
                raw = written[m.start() : m.end()].strip()
                found.append((m.start(), replace(q, raw=raw, start=m.start(), end=m.end())))
                taken.append((m.start(), m.end()))
    return tuple(q for _, q in sorted(found, key=lambda item: item[0]))


def is_negated(text: str) -> bool:
    """True when the clause holds a negation cue outside a numeric bound phrase ("no more than")."""
    text = text.lower().replace("\u2019", "'")
    return bool(_NEGATION.search(_BOUND_PHRASES.sub(" ", text)))


def _ends_with_abbreviation(text: str) -> bool:
    """The last *word* is an abbreviation ("Dr."), not merely the last letters ("symptoms.")."""
    words = text.lower().split()
    return bool(words) and words[-1] in _ABBREVIATIONS


def split_sentences(answer: str) -> list[str]:
    """Sentences and list items, markdown emphasis removed; questions dropped."""
    pieces: list[str] = []
    for piece in _SENTENCE_BREAK.split(answer):
        piece = _BULLET.sub("", piece.replace("**", "").replace("__", "")).strip()
        if pieces and _ends_with_abbreviation(pieces[-1]):
            pieces[-1] = f"{pieces[-1]} {piece}"  # "Dr. Smith" was not a sentence break
        elif piece:
            pieces.append(piece)
    return [p for p in pieces if not p.endswith("?")]


def split_clauses(sentence: str) -> list[str]:
    """Split on "; ", then on clause connectors where both sides are clause-sized."""
    return [c for part in re.split(r";\s+", sentence) for c in _split_connectors(part)]


def _split_connectors(sentence: str) -> list[str]:
    match = next(
        (
            m
            for m in _CLAUSE_BREAK.finditer(sentence)
            if len(sentence[: m.start()].split()) >= MIN_CLAUSE_WORDS
            and len(sentence[m.end() :].split()) >= MIN_CLAUSE_WORDS
        ),
        None,
    )
    if match is None:
        return [sentence]
    return [sentence[: match.start()]] + _split_connectors(sentence[match.end() :])


def make_assertion(text: str) -> Assertion:
    text = text.replace("\u2019", "'").strip().strip(" ,;:.!").strip()
    lower = text.lower()
    return Assertion(
        text=text,
        lower=lower,
        negated=is_negated(text),
        quantities=extract_quantities(text),
        hedged=bool(_HEDGES.search(lower)),
        warns=bool(_WARNINGS.search(lower)),
    )


def split_assertions(answer: str) -> list[Assertion]:
    """The answer's atomic assertions, in order."""
    clauses = [c for s in split_sentences(answer) for c in split_clauses(s)]
    return [a for a in map(make_assertion, clauses) if a.text]
