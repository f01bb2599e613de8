"""Word lists and light text analysis shared by the usefulness and online bad-pattern scorers.

- `STOPWORDS`: English function words (plus the contracted forms the tokenizer keeps, "i'm", "don't").
- `stem`: a light, deterministic suffix stripper (two passes: plural, then one derivational suffix),
  so that "pregnant"/"pregnancy", "diabetes"/"diabetic", "doses"/"dosing" meet. It is deliberately
  conservative (a stem keeps at least 3 letters) and is not a full Porter stemmer.
- `content_terms`: the stemmed content words of a text, in first-seen order, with their surface form.
- `concreteness`: whether a text holds a concrete action (an imperative-style action verb) and a
  specific detail (a number, a dose or a time frame); referral-only phrases ("see your doctor") count
  as an action but are flagged separately so detectors can tell a real plan from boilerplate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from quark_lightning.infra.text import words

STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren't as at be because been before being
    below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
    during each even ever every few for from further get gets getting got had hadn't has hasn't have
    haven't having he he'd he'll he's her here here's hers herself him himself his how how's however i i'd
    i'll i'm i've if in into is isn't it it's its itself just let's may me might more most much must
    mustn't my myself no nor not now of off on once only or other ought our ours ourselves out over own
    per quite rather really same shall shan't she she'd she'll she's should shouldn't so some such than
    that that's the their theirs them themselves then there there's these they they'd they'll they're
    they've this those through thus to too under until up upon us very was wasn't we we'd we'll we're
    we've were weren't what what's when when's where where's whether which while who who's whom whose why
    why's will with within without won't would wouldn't yet you you'd you'll you're you've your yours
    yourself yourselves
    """.split()
)

# Words a lay question carries that no answer needs to echo ("should I ...", "I'm worried that ...").
QUESTION_FILLER = frozenset(
    """
    actually anything ask asking bad best better bit case cause check completely concern concerned day days
    doctor done feel feeling fine go going good happen happened help ill know last like look looks lot mean
    means need needs normal ok okay one past people please possible problem put question right safe said
    say says see seem seems something sometimes start started still sure take taking tell thing things
    think time today told try want wanted way week weeks well wonder wondering worried worry worse year
    years yesterday
    """.split()
)

# Hedging and frequency words a reference uses that say nothing specific ("usually best avoided").
GENERIC_WORDS = frozenset(
    """
    also always commonly especially generally including include includes least less likely many mainly
    may more most much normally often particularly several sometimes such typically usually various
    """.split()
)

ACTION_VERBS = frozenset(
    """
    apply ask avoid book call change check choose contact continue cut drink eat exercise follow get give
    go increase keep limit lower measure monitor note plan prefer raise reduce remove rest return seek
    see sit sleep speak start stay stop switch take talk tell test track try use visit wait walk wash
    watch wear write
    """.split()
)

_REFERRAL = re.compile(
    r"\b(see|consult|contact|talk to|speak (to|with)|check with|ask)\s+(a|an|your|the)\s+"
    r"(doctor|gp|physician|pharmacist|nurse|clinician|healthcare (professional|provider)|"
    r"(medical |health(care)? )?professional|specialist)\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b|\b(two|three|four|five|six|seven|eight|ten|twice)\b", re.I)
_TIME_FRAME = re.compile(
    r"\b(within|for|after|every|each|per|over)\s+(\d+|a|an|one|two|three|few|several)?\s*"
    r"(minutes?|hours?|days?|weeks?|months?|years?|night|morning|evening)\b"
    r"|\b(daily|nightly|weekly|today|tonight|now|immediately|right away|straight away|urgently)\b",
    re.IGNORECASE,
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")

_PLURAL = (("ies", "y"), ("ied", "y"), ("sses", "ss"), ("es", ""), ("s", ""))
_DERIVATIONAL = tuple(
    sorted(
        "ational ation ition ness ment ancy ency ance ence ings ing ant ent ion ical ic al ed er ly ive "
        "ous ity y e".split(),
        key=len,
        reverse=True,
    )
)
_KEEP_S = ("ss", "us", "is")
MIN_STEM = 3


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Light stemmer: strip a plural ending, then the longest derivational suffix (stem >= 3 letters)."""
    w = word.lower().strip("'")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix, repl in _PLURAL:
        if w.endswith(suffix) and not (suffix == "s" and w.endswith(_KEEP_S)):
            if len(w) - len(suffix) + len(repl) >= MIN_STEM:
                w = w[: len(w) - len(suffix)] + repl
            break
    for suffix in _DERIVATIONAL:
        if w.endswith(suffix) and len(w) - len(suffix) >= MIN_STEM:
            if suffix == "ed" and w.endswith("eed"):
                break
            return w[: -len(suffix)]
    return w


def is_content_word(token: str, extra_stop: frozenset[str] = frozenset()) -> bool:
    return len(token) >= 3 and token not in STOPWORDS and token not in extra_stop and not token[0].isdigit()


def content_terms(text: str, extra_stop: frozenset[str] = frozenset()) -> dict[str, str]:
    """Stem -> first surface form, for the content words of `text` (first-seen order)."""
    out: dict[str, str] = {}
    for token in words(text):
        if is_content_word(token, extra_stop):
            out.setdefault(stem(token), token)
    return out


def stem_set(text: str) -> frozenset[str]:
    """Stems of every word of `text` (no stopword removal: an answer addresses a term by any mention)."""
    return frozenset(stem(t) for t in words(text))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


@dataclass(frozen=True)
class Concreteness:
    action: str | None  # the first action verb found (outside referral-only phrases), if any
    referral: str | None  # the first "see your doctor"-style phrase, if any
    detail: str | None  # the first number / dose / time frame, if any

    @property
    def concrete(self) -> bool:
        """A real plan: an action beyond a bare referral, or a specific detail."""
        return self.action is not None or self.detail is not None


def concreteness(text: str) -> Concreteness:
    referral = _REFERRAL.search(text)
    rest = _REFERRAL.sub(" ", text)
    action = next((t for t in words(rest) if t in ACTION_VERBS), None)
    detail = _NUMBER.search(text) or _TIME_FRAME.search(text)
    return Concreteness(
        action=action,
        referral=referral.group(0).lower() if referral else None,
        detail=detail.group(0).lower() if detail else None,
    )
