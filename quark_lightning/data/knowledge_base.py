"""The knowledge base behind GARM's evidence: its entries and claims, loaded and validated.

Knowledge base (JSONL, docs/design.md section 3): `{"id", "text", "source", "area", "claims": [...]}`.
A claim is `{"entity", "aliases", "attribute", "keywords", and exactly one of "quantity" or "polarity"}`,
with `quantity = {"value", "unit", "relation": eq|max|min|range, "value_high" (range only), "tolerance"}`.
Every bad row is reported as `FILE:LINE: field 'x': what is wrong` before anything is scored.
Limits: ids of at most 200 characters, text of at most 100,000, at most `MAX_CLAIMS` (50) claims an
entry and 100 keywords or aliases a claim (see `quark_lightning/data/schema.py`). A file with no entries
(blank lines only) is allowed: GARM then scores NaN (nothing to check against); a file of 0 bytes is
refused (the mark of a copy cut short, not of a knowledge base).

The retrievers that rank these entries for a query are in scorers/retrieval.py.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quark_lightning.data import ASSETS
from quark_lightning.data.schema import (
    MAX_LIST_ITEMS,
    DataValidationError,
    check_count,
    check_id,
    check_text,
    read_jsonl,
)
from quark_lightning.data.units import canonical_unit, known_units
from quark_lightning.infra.errors import ConfigError

BUNDLED_KB = ASSETS / "knowledge_base.jsonl"
RELATIONS = ("eq", "max", "min", "range")
MAX_CLAIMS = 50  # claims of one entry


@dataclass(frozen=True)
class QuantityClaim:
    value: float
    unit: str
    relation: str  # eq | max | min | range
    value_high: float | None = None  # range only
    tolerance: float = 0.0

    def interval(self) -> tuple[float, float, str]:
        """(low, high, canonical unit) of the values the claim allows, tolerance included."""
        low, unit = canonical_unit(self.value - self.tolerance, self.unit)
        top = self.value_high if self.relation == "range" else self.value
        high, _ = canonical_unit(top + self.tolerance, self.unit)  # type: ignore[operator]
        if self.relation == "max":
            return -math.inf, high, unit
        if self.relation == "min":
            return low, math.inf, unit
        return low, high, unit

    def describe(self) -> str:
        if self.relation == "range":
            return f"range {self.value:g} to {self.value_high:g} {self.unit}"
        tol = f" (+/- {self.tolerance:g})" if self.tolerance else ""
        return f"{self.relation} {self.value:g} {self.unit}{tol}"


@dataclass(frozen=True)
class Claim:
    entity: str
    attribute: str
    keywords: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    quantity: QuantityClaim | None = None
    polarity: bool | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.entity, *self.aliases)


@dataclass(frozen=True)
class EvidenceEntry:
    id: str
    text: str
    source: str = ""
    area: str = ""
    claims: tuple[Claim, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def search_text(self) -> str:
        """What BM25 indexes: the statement plus the words of its claims."""
        extra = [w for c in self.claims for w in (*c.names, c.attribute, *c.keywords)]
        return " ".join([self.text, *extra])


# ---------------------------------------------------------------------------------------------- loading


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_text(x: Any) -> bool:
    return isinstance(x, str) and bool(x.strip())


def _check_string_list(value: Any, where: str, non_empty: bool) -> list[str]:
    if not isinstance(value, list) or not all(_is_text(v) for v in value):
        return [f"field '{where}': must be a list of non-empty strings"]
    if len(value) > MAX_LIST_ITEMS:
        return check_count(value, where, MAX_LIST_ITEMS, "keep the most distinctive ones")
    if non_empty and not value:
        return [f"field '{where}': must not be empty (the claim is only relevant when one of them appears)"]
    return []


def _check_quantity(q: Any, where: str) -> list[str]:
    if not isinstance(q, dict):
        return [f'field \'{where}\': must be an object like {{"value": 4, "unit": "g", "relation": "max"}}']
    errs = []
    if not _is_number(q.get("value")):
        errs.append(f"field '{where}.value': must be a number, got {q.get('value')!r}")
    unit = q.get("unit")
    if not isinstance(unit, str) or unit.strip().lower() not in known_units():
        errs.append(f"field '{where}.unit': unknown unit {unit!r}; use one of {', '.join(known_units())}")
    relation = q.get("relation")
    if relation not in RELATIONS:
        errs.append(f"field '{where}.relation': got {relation!r}, expected one of {', '.join(RELATIONS)}")
    high = q.get("value_high")
    if relation == "range" and not (_is_number(high) and _is_number(q.get("value")) and high >= q["value"]):
        errs.append(f"field '{where}.value_high': a range needs a number >= value, got {high!r}")
    if relation != "range" and high is not None:
        errs.append(f"field '{where}.value_high': only a 'range' relation takes value_high")
    tol = q.get("tolerance", 0.0)
    if not (_is_number(tol) and tol >= 0):
        errs.append(f"field '{where}.tolerance': must be a number >= 0, got {tol!r}")
    return errs


def _check_claim(claim: Any, where: str) -> list[str]:
    if not isinstance(claim, dict):
        return [
            f"field '{where}': must be an object with entity, attribute, keywords and quantity or polarity"
        ]
    errs = []
    for key in ("entity", "attribute"):
        if not _is_text(claim.get(key)):
            errs.append(f"field '{where}.{key}': must be a non-empty string")
    errs += _check_string_list(claim.get("keywords"), f"{where}.keywords", non_empty=True)
    if "aliases" in claim:
        errs += _check_string_list(claim["aliases"], f"{where}.aliases", non_empty=False)
    kinds = [k for k in ("quantity", "polarity") if k in claim]
    if len(kinds) != 1:
        errs.append(
            f"field '{where}': needs exactly one of 'quantity' or 'polarity', got {kinds or 'neither'}"
        )
    elif kinds == ["quantity"]:
        errs += _check_quantity(claim["quantity"], f"{where}.quantity")
    elif not isinstance(claim["polarity"], bool):
        errs.append(f"field '{where}.polarity': must be true or false, got {claim['polarity']!r}")
    return errs


def validate_entry(row: Any) -> list[str]:
    """Problems of one knowledge-base row, each starting with `field '...'`."""
    if not isinstance(row, dict):
        return [f"the row must be a JSON object, got {type(row).__name__}"]
    errs = check_id(row.get("id"), "id", "kb-pharm-001")
    errs += check_text(row.get("text"), "text", " (the authoritative statement)")
    for key in ("source", "area"):
        if key in row and not isinstance(row[key], str):
            errs.append(f"field '{key}': must be a string")
    claims = row.get("claims", [])
    if not isinstance(claims, list):
        errs.append("field 'claims': must be a list of claim objects")
    elif len(claims) > MAX_CLAIMS:
        errs += check_count(claims, "claims", MAX_CLAIMS, "split the entry into several entries")
    else:
        errs += [e for i, c in enumerate(claims) for e in _check_claim(c, f"claims[{i}]")]
    return errs


def _quantity(q: dict[str, Any]) -> QuantityClaim:
    high = q.get("value_high")
    return QuantityClaim(
        value=float(q["value"]),
        unit=q["unit"].strip(),
        relation=q["relation"],
        value_high=None if high is None else float(high),
        tolerance=float(q.get("tolerance", 0.0)),
    )


def _claim(c: dict[str, Any]) -> Claim:
    return Claim(
        entity=c["entity"].strip().lower(),
        attribute=c["attribute"],
        keywords=tuple(k.strip().lower() for k in c["keywords"]),
        aliases=tuple(a.strip().lower() for a in c.get("aliases", [])),
        quantity=_quantity(c["quantity"]) if "quantity" in c else None,
        polarity=c.get("polarity"),
    )


def _entry(row: dict[str, Any]) -> EvidenceEntry:
    known = {"id", "text", "source", "area", "claims"}
    return EvidenceEntry(
        id=row["id"],
        text=row["text"],
        source=row.get("source", ""),
        area=row.get("area", ""),
        claims=tuple(_claim(c) for c in row.get("claims", [])),
        metadata={k: v for k, v in row.items() if k not in known},
    )


def resolve_kb_path(path: str) -> Path:
    resolved = BUNDLED_KB if path == "bundled" else Path(path).expanduser()
    if not resolved.is_file():
        raise ConfigError(
            f"knowledge_base: file {str(resolved)!r} not found; pass the path of a JSONL evidence file "
            "(one {'id', 'text', 'source', 'claims'} object a line) or 'bundled'"
        )
    return resolved


def load_knowledge_base(path: str = "bundled") -> list[EvidenceEntry]:
    """Read and validate a JSONL knowledge base; raise DataValidationError listing every bad row."""
    source = str(resolve_kb_path(path))
    if os.path.getsize(source) == 0:  # a copy cut short, not a knowledge base: refused, not read as empty
        raise DataValidationError(
            [
                f"{source}: the file is empty (0 bytes; a copy cut short?). Fix: write one JSON object a "
                "line (a knowledge base with no entries on purpose, GARM then scoring NaN: one blank line)"
            ]
        )
    entries, errors, seen = [], [], {}
    for line, row in read_jsonl(source):
        problems = validate_entry(row)
        if not problems and row["id"] in seen:
            problems = [
                f"field 'id': {row['id']!r} already used on line {seen[row['id']]}; ids must be unique"
            ]
        errors += [f"{source}:{line}: {p}" for p in problems]
        if not problems:
            seen[row["id"]] = line
            entries.append(_entry(row))
    if errors:
        raise DataValidationError(errors)
    return entries
