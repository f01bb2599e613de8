"""Units of the quantities medical answers state, and their conversion to one canonical unit per dimension
(mass -> g, volume -> ml, time -> day, months and years -> year, temperature -> C, pressure -> mmHg, % ...).
Shared by the knowledge base's claims (data/knowledge_base.py) and GARM's assertions (scorers/assertions.py).
"""

from __future__ import annotations

# surface form -> (canonical unit, factor, offset): canonical = value * factor + offset
UNIT_FORMS: dict[str, tuple[str, float, float]] = {}


def _add(forms: str, canonical: str, factor: float = 1.0, offset: float = 0.0) -> None:
    for form in forms.split("|"):
        UNIT_FORMS[form] = (canonical, factor, offset)


_add("g|gram|grams|gramme|grammes", "g")
_add("kg|kilogram|kilograms", "g", 1e3)
_add("mg|milligram|milligrams|milligramme|milligrammes", "g", 1e-3)
_add("mcg|µg|μg|ug|microgram|micrograms", "g", 1e-6)
_add("ml|millilitre|millilitres|milliliter|milliliters", "ml")
_add("l|litre|litres|liter|liters", "ml", 1e3)
_add("minute|minutes|min|mins", "day", 1 / 1440)
_add("hour|hours|hr|hrs|h", "day", 1 / 24)
_add("day|days", "day")
_add("week|weeks|wk|wks", "day", 7.0)
_add("month|months", "year", 1 / 12)
_add("year|years|yr|yrs", "year")
_add("°c|° c|degrees c|degree c|degrees celsius|degree celsius|celsius|c|degrees|°", "C")
_add("°f|° f|degrees f|degree f|degrees fahrenheit|fahrenheit|f", "C", 5 / 9, -32 * 5 / 9)
_add("mmhg|mm hg", "mmHg")
_add("%|percent|per cent", "%")
_add("mmol/l|mg/dl|mg/kg|mcg/kg|kg/m2|kg/m²|iu|units|bpm", "")  # own dimension: canonical = the form
_add("times|tablet|tablets|capsule|capsules|puff|puffs|drop|drops|dose|doses", "")


def canonical_unit(value: float, unit: str) -> tuple[float, str]:
    """(value in the canonical unit, canonical unit); KeyError for a unit not listed here."""
    canonical, factor, offset = UNIT_FORMS[unit.strip().lower()]
    return value * factor + offset, canonical or unit.strip().lower()


def known_units() -> list[str]:
    return sorted(UNIT_FORMS)
