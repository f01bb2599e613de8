"""Online-feedback dimension: bad patterns mined from users' dislikes, plus built-in detectors.

Closed loop (paper: *observable metric -> attributable diagnosis -> optimizable reward*): the online log
(`{"id", "messages", "response", "rating": 1 | -1, "tags": [...]}`, docs/design.md section 3) gives the dislike
rate; `mine_bad_patterns` attributes dislikes to word n-grams and tags; `BadPatternScorer` turns the
patterns into a reward.

**Mining** (interpretation; the paper gives no method). Each response contributes the *set* of its word
n-grams (n = 1..3, lowercased; an n-gram made only of stopwords is never a candidate), so counts are
document frequencies: y_b(w) disliked responses and y_g(w) liked responses contain w. The score is the
log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008, "Fightin' Words",
eqs. 16-22, with their approximate variance):

    alpha_w = s * (y_b(w) + y_g(w)),   alpha_0 = s * (n_b + n_g)        prior: the pooled log, scale s
    delta_w = log((y_b + alpha_w) / (n_b + alpha_0 - y_b - alpha_w))
            - log((y_g + alpha_w) / (n_g + alpha_0 - y_g - alpha_w))
    var_w   = 1 / (y_b + alpha_w) + 1 / (y_g + alpha_w),     z_w = delta_w / sqrt(var_w)

Totals (`totals`): "documents" (default) takes n_b, n_g = the number of disliked / liked responses, so
delta is the log-odds ratio of *a response containing w* (a Beta-binomial reading of the same formula),
which is what the scorer detects and which does not favour words of short disliked answers (refusals) or
long ones (verbose answers) merely for their length; "ngrams" is Monroe's multinomial, each n-gram
order with its own totals n = the group's count of n-grams of that order. s = 1 (default) is Monroe's
choice of the pooled corpus as prior; s < 1 weakens the prior (higher variance for n-grams that liked
responses never use). On a synthetic log built from the bundled references plus templated hedging,
refusal and verbose answers (tests/test_online_usefulness.py), (documents, s = 1) recovers exactly the
templated phrases ("everyone is different", "advice please consult", "summary to summarize") and no
topical word, while s = 0.1 prefers loose single words ("depends", "please") and "ngrams" totals let
topical words ("baby", "condition") through.

A pattern is kept when y_b >= min_count, delta > 0 and z >= min_z (default 1.645, a one-sided 5% test:
only over-representation among dislikes is sought), ranked by z (then y_b, then fewer stopwords at its
ends, then longer). Redundant n-grams are dropped: one contained in (or containing) a better-ranked
pattern, or one found in nearly the same disliked responses (Jaccard >= `dedupe_jaccard`, 0.8) as a
better-ranked pattern, so a templated sentence yields one pattern rather than all its 3-grams. Each
pattern is attributed to the most frequent tag among the disliked responses containing it (ties:
alphabetical; "untagged" when they carry none), with that tag's share.

**Reward.** Detected patterns p each carry a weight w_p in [0, 1] (built-in detectors: `weights`; mined
patterns: `mined_weight`) and a tag. Within a tag only the strongest counts (one failure mode is not
punished twice because both a detector and a mined n-gram see it); tags combine as a noisy-OR:

    score = prod_t (1 - max_{p detected, tag(p) = t} w_p)        in [0, 1]; 1 = no bad pattern

It applies to every answer (never NaN). Built-in detectors, after the patterns the online log shows:

- `hedging` (tag hedging): a hedge phrase ("it depends", "everyone is different", "I can't say") in an
  answer that holds no concrete content once hedges and boilerplate are removed (no action verb outside
  referral phrases, no number, dose or time frame), or hedges in two or more sentences making up at
  least `max_hedge_share` of them;
- `boilerplate_refusal` (tag refusal): sentences with refusal or referral boilerplate ("as an AI",
  "I cannot give medical advice", "consult a professional") and nothing concrete besides (so "seek
  medical help immediately" is not boilerplate) make up at least `refusal_share` of the words;
- `verbosity` (tag verbose): more than `max_words` words, or more than `max_repeated_sentence_ratio`
  of the sentences repeat an earlier one;
- `repetition` (tag repetitive): more than `max_repeated_trigram_fraction` of word 3-grams repeat.

Mined patterns come from `patterns` (a JSON file written by the CLI below), which wins over `feedback`
(a feedback JSONL mined when the scorer is built; "bundled" = data/assets/online_feedback.jsonl;
null = built-in detectors only). A mined n-gram is detected on word boundaries of the tokenized answer.

Loop patterns (closed loop, eval/loop_patterns.py): phrases mined from the policy's own failing held-out
answers, set with `set_loop_patterns`; each one an answer contains is a hit of tag "loop" with weight
`loop_weight` (so several loop phrases cost the weight once), detected like the mined n-grams (the same
n-gram set of the answer, its n raised to the longest loop phrase). With no loop patterns the scores are
those without them.

Findings: `bad pattern 'boilerplate_refusal': "i cannot give medical advice" (tag: boilerplate_refusal)`, for a
mined pattern `bad pattern 'mined': "everyone is different" (tag: hedging, z=2.31)`, and for a loop
pattern `bad pattern 'loop-mined': "just wait and see" (tag: loop, mined at step 40 from 4 failing
held-out answers)`.

CLI: `python -m quark_lightning.rewards.online --input FEEDBACK.jsonl --output patterns.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from quark_lightning.data import ASSETS
from quark_lightning.data.schema import DataValidationError, check_messages, read_jsonl
from quark_lightning.errors import QuarkError
from quark_lightning.rewards.base import ScoreResult
from quark_lightning.rewards.lexicon import STOPWORDS, concreteness, sentences
from quark_lightning.rewards.text import repeated_ngram_fraction, search, substitute, words

BUNDLED_FEEDBACK = ASSETS / "online_feedback.jsonl"
TOTALS = ("documents", "ngrams")
MINING_METHOD = "log-odds ratio, informative Dirichlet prior (Monroe et al. 2008), document frequencies"

# ---------------------------------------------------------------------------------------------------
# Feedback log
# ---------------------------------------------------------------------------------------------------


def resolve_feedback(path: str) -> str:
    """`bundled` names the bundled online-feedback log; anything else is used as given."""
    return str(BUNDLED_FEEDBACK) if path in ("bundled", "") else path


def validate_feedback(record: Any) -> list[str]:
    """Problems of one online-feedback record, each starting with `field '...'`."""
    if not isinstance(record, dict):
        return [f"the row must be a JSON object, got {type(record).__name__}"]
    errs = check_messages(record.get("messages"))
    if not isinstance(record.get("response"), str) or not record["response"].strip():
        errs.append("field 'response': must be a non-empty string (the answer users rated)")
    rating = record.get("rating")
    if isinstance(rating, bool) or rating not in (1, -1):
        errs.append(f"field 'rating': got {rating!r}, expected 1 (liked) or -1 (disliked)")
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        errs.append('field \'tags\': must be a list of non-empty strings (e.g. ["verbose", "hedging"])')
    return errs


def read_feedback(path: str) -> list[dict[str, Any]]:
    """Validated feedback records; every bad row is reported as `FILE:LINE: field ...`."""
    path = resolve_feedback(path)
    if not Path(path).is_file():
        raise DataValidationError(
            [f"{path}: online feedback file not found (pass an existing JSONL file, or feedback=null)"]
        )
    records, errors = [], []
    for line, record in read_jsonl(path):
        problems = validate_feedback(record)
        errors += [f"{path}:{line}: {p}" for p in problems]
        if not problems:
            records.append(record)
    if errors:
        raise DataValidationError(errors)
    if not any(r["rating"] == -1 for r in records) or not any(r["rating"] == 1 for r in records):
        raise DataValidationError([f"{path}: mining needs both liked (1) and disliked (-1) responses"])
    return records


# ---------------------------------------------------------------------------------------------------
# Mining
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinedPattern:
    pattern: str  # space-joined lowercased word n-gram
    n: int
    tag: str  # most frequent tag among the disliked responses containing it
    tag_share: float  # share of those responses that carry the tag
    log_odds: float  # delta_w
    z: float  # delta_w / sd
    disliked_count: int  # y_b: disliked responses containing it
    liked_count: int  # y_g: liked responses containing it


def ngram_set(tokens: Sequence[str], max_n: int = 3) -> set[str]:
    """Distinct word n-grams (n = 1..max_n) of a token list, space-joined."""
    return {" ".join(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)}


def is_candidate(gram: str, stopwords: frozenset[str]) -> bool:
    return any(t not in stopwords for t in gram.split())


def log_odds_dirichlet(
    y_b: torch.Tensor, y_g: torch.Tensor, n_b: torch.Tensor, n_g: torch.Tensor, prior_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta, z) of Monroe et al. (2008) with alpha_w = s * (y_b + y_g); all inputs (V,) float64."""
    alpha = prior_scale * (y_b + y_g)  # (V,)
    alpha0 = prior_scale * (n_b + n_g)  # (V,) per n-gram order
    bad = torch.log((y_b + alpha) / (n_b + alpha0 - y_b - alpha))
    good = torch.log((y_g + alpha) / (n_g + alpha0 - y_g - alpha))
    delta = bad - good  # (V,)
    return delta, delta / torch.sqrt(1.0 / (y_b + alpha) + 1.0 / (y_g + alpha))


def attribute_tag(doc_ids: Sequence[int], doc_tags: Sequence[Sequence[str]]) -> tuple[str, float]:
    """Most frequent tag among the given disliked responses (ties: alphabetical), and its share."""
    counts = Counter(t for j in doc_ids for t in dict.fromkeys(doc_tags[j]))
    if not counts:
        return "untagged", 0.0
    tag, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return tag, count / len(doc_ids)


def edge_stopwords(gram: str, stopwords: frozenset[str]) -> int:
    """How many of the n-gram's two ends are stopwords (a tie-break: prefer phrases that end on content)."""
    tokens = gram.split()
    return (tokens[0] in stopwords) + (len(tokens) > 1 and tokens[-1] in stopwords)


def redundant(gram: str, docs: frozenset[int], kept: dict[str, frozenset[int]], jaccard: float) -> bool:
    """Contained in / containing a kept pattern, or found in (nearly) the same disliked responses."""
    padded = f" {gram} "
    for other, other_docs in kept.items():
        if padded in f" {other} " or f" {other} " in padded:
            return True
        if len(docs & other_docs) >= jaccard * len(docs | other_docs):
            return True
    return False


def count_ngrams(
    docs: Sequence[tuple[set[str], int]], max_n: int
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vocabulary and (V,) document counts y_b, y_g, with each n-gram's order index (n - 1)."""
    bad = Counter(g for grams, rating in docs if rating == -1 for g in grams)
    good = Counter(g for grams, rating in docs if rating == 1 for g in grams)
    vocab = sorted(set(bad) | set(good))
    y_b = torch.tensor([bad[g] for g in vocab], dtype=torch.float64)  # (V,)
    y_g = torch.tensor([good[g] for g in vocab], dtype=torch.float64)  # (V,)
    order = torch.tensor([g.count(" ") for g in vocab], dtype=torch.long)  # (V,)
    return vocab, y_b, y_g, order


def mine_bad_patterns(
    records: Sequence[dict[str, Any]],
    min_count: int = 3,
    top_k: int = 20,
    max_n: int = 3,
    min_z: float = 1.645,
    prior_scale: float = 1.0,
    dedupe_jaccard: float | None = 0.8,
    totals: str = "documents",
    stopwords: frozenset[str] = STOPWORDS,
) -> list[MinedPattern]:
    """N-grams over-represented in disliked (-1) vs liked (+1) responses, best first (see module doc).

    `dedupe_jaccard`: drop an n-gram contained in (or containing) a better-ranked pattern, or whose set of
    disliked responses has Jaccard similarity >= this with a better-ranked pattern's (None: no dedupe).
    Ranking: z, then disliked count, then fewer stopwords at the ends, then longer, then alphabetical.
    `totals`: "documents" (n = number of responses in the group) or "ngrams" (n = the group's n-gram
    count of the same order), see the module docstring.
    """
    if prior_scale <= 0:
        raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
    if totals not in TOTALS:
        raise ValueError(f"totals must be one of {TOTALS}, got {totals!r}")
    docs = [(ngram_set(words(r["response"]), max_n), r["rating"]) for r in records]
    vocab, y_b, y_g, order = count_ngrams(docs, max_n)
    if not vocab:
        return []
    if totals == "documents":
        n_b = torch.full_like(y_b, sum(rating == -1 for _, rating in docs))  # (V,) responses per group
        n_g = torch.full_like(y_g, sum(rating == 1 for _, rating in docs))  # (V,)
    else:
        n_b = torch.zeros(max_n, dtype=torch.float64).index_add_(0, order, y_b)[order]  # (V,) per order
        n_g = torch.zeros(max_n, dtype=torch.float64).index_add_(0, order, y_g)[order]  # (V,)
    everywhere = (y_b == n_b) & (y_g == n_g)  # (V,) in every response: no contrast (and 0/0 below)
    delta, z = log_odds_dirichlet(y_b, y_g, n_b, n_g, prior_scale)
    keep = (y_b >= min_count) & (delta > 0) & (z >= min_z) & ~everywhere  # (V,)
    candidates = [i for i in keep.nonzero().flatten().tolist() if is_candidate(vocab[i], stopwords)]
    candidates.sort(
        key=lambda i: (
            -round(z[i].item(), 9),
            -y_b[i].item(),
            edge_stopwords(vocab[i], stopwords),
            -order[i].item(),
            vocab[i],
        )
    )
    disliked = [
        (grams, list(r.get("tags") or [])) for (grams, rating), r in zip(docs, records) if rating == -1
    ]
    wanted = {vocab[i] for i in candidates}
    postings: dict[str, list[int]] = {g: [] for g in wanted}
    for j, (grams, _) in enumerate(disliked):
        for g in grams & wanted:
            postings[g].append(j)
    tags = [t for _, t in disliked]
    kept: dict[str, frozenset[int]] = {}
    out: list[MinedPattern] = []
    for i in candidates:
        gram, doc_ids = vocab[i], frozenset(postings[vocab[i]])
        if dedupe_jaccard is not None and redundant(gram, doc_ids, kept, dedupe_jaccard):
            continue
        kept[gram] = doc_ids
        tag, share = attribute_tag(sorted(doc_ids), tags)
        out.append(
            MinedPattern(
                gram, int(order[i]) + 1, tag, share, delta[i].item(), z[i].item(), int(y_b[i]), int(y_g[i])
            )
        )
        if len(out) >= top_k:
            break
    return out


def save_patterns(patterns: Sequence[MinedPattern], path: str, source: str, settings: dict[str, Any]) -> None:
    payload = {
        "source": source,
        "method": MINING_METHOD,
        "settings": settings,
        "patterns": [asdict(p) for p in patterns],
    }
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def load_patterns(path: str) -> list[MinedPattern]:
    """Patterns from a JSON file written by `save_patterns` (or a bare list of pattern objects)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        items = data["patterns"] if isinstance(data, dict) else data
        return [MinedPattern(**{**item, "pattern": str(item["pattern"]).lower()}) for item in items]
    except FileNotFoundError as err:
        raise DataValidationError(
            [f"{path}: patterns file not found (write one with the mining CLI)"]
        ) from err
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataValidationError(
            [
                f"{path}: not a mined-patterns file ({type(err).__name__}: {err}); "
                "expected {'patterns': [...]} as written by the mining CLI"
            ]
        ) from err


# ---------------------------------------------------------------------------------------------------
# Built-in detectors
# ---------------------------------------------------------------------------------------------------

HEDGES = [
    r"\bit (all |really )?depends\b",
    r"\bevery(one|body| person| case) is different\b",
    r"\bi (can't|cannot|can not|am unable to|'m unable to|am not able to) (really )?"
    r"(say|tell|know|be sure)\b",
    r"\b(it's|it is) (hard|difficult|impossible) to (say|know|tell|predict)\b",
    r"\b(hard|difficult) to say\b",
    r"\bthere('s| is) no (simple|easy|single|one) answer\b",
    r"\bvaries (a lot )?from person to person\b",
    r"\bmay or may not\b",
    r"\bno one can say\b",
]
REFUSALS = [
    r"\bas an ai( language model| assistant)?\b",
    r"\bi('m| am) (just |only )?an? (ai|language model|chatbot|virtual assistant)\b",
    r"\bi('m| am) not a (doctor|medical professional|physician|healthcare professional)\b",
    r"\bi (cannot|can't|can not|am unable to|'m unable to|am not able to|won't) (give|provide|offer)"
    r"( you)?( any)?( specific| personal(ised|ized)?)? (medical|health) advice\b",
    r"\bi (cannot|can't|can not) (diagnose|help with (that|this))\b",
    r"\b(please )?(consult|see|talk to|speak (to|with)) (a|an|your) (doctor|physician|gp|"
    r"(qualified )?(medical |healthcare |health )?(professional|provider))\b",
    r"\bseek (professional|medical) (advice|help|guidance)\b",
    r"\bthis (is not|isn't|does not constitute) medical advice\b",
    r"\bfor (general )?informational purposes only\b",
]
DETECTOR_TAGS = {
    "hedging": "hedging",
    "boilerplate_refusal": "boilerplate_refusal",
    "verbosity": "verbose",
    "repetition": "repetitive",
}
DETECTOR_WEIGHTS = {"hedging": 0.4, "boilerplate_refusal": 0.6, "verbosity": 0.3, "repetition": 0.4}

Detector = Callable[[str], str | None]  # evidence of the pattern in the answer, or None


def first_match(patterns: Sequence[str], text: str) -> str | None:
    for p in patterns:
        if m := search(p, text):
            return m.group(0).lower()
    return None


def has_substance(text: str) -> bool:
    """Concrete content (an action verb outside referrals, a number, dose or time frame) once hedges and
    refusal boilerplate are removed: "seek medical help immediately" has it, "as an AI ..." does not."""
    for p in HEDGES + REFUSALS:
        text = substitute(p, " ", text)
    return concreteness(text).concrete


def repeated_sentence_ratio(text: str) -> float:
    """Share of sentences that repeat an earlier one (compared as lowercased word sequences)."""
    keys = [" ".join(words(s)) for s in sentences(text)]
    keys = [k for k in keys if k]
    return 1.0 - len(set(keys)) / len(keys) if keys else 0.0


# ---------------------------------------------------------------------------------------------------
# Scorer
# ---------------------------------------------------------------------------------------------------


class BadPatternScorer:
    def __init__(
        self,
        patterns: str | None = None,
        feedback: str | None = "bundled",
        detectors: Sequence[str] = tuple(DETECTOR_TAGS),
        weights: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        mined_weight: float = 0.25,
        loop_weight: float = 0.25,
        max_words: int = 250,
        max_repeated_sentence_ratio: float = 0.2,
        max_repeated_trigram_fraction: float = 0.25,
        refusal_share: float = 0.6,
        max_hedge_share: float = 0.5,
        min_count: int = 3,
        top_k: int = 20,
        max_n: int = 3,
        min_z: float = 1.645,
        prior_scale: float = 1.0,
        totals: str = "documents",
    ):
        unknown = set(detectors) - set(DETECTOR_TAGS) | set(weights or {}) - set(DETECTOR_TAGS)
        if unknown:
            raise ValueError(
                f"bad patterns: unknown detector(s) {sorted(unknown)}; available: {sorted(DETECTOR_TAGS)}"
            )
        self.weights = {**DETECTOR_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        if not all(0 <= w <= 1 for w in [*self.weights.values(), mined_weight, loop_weight]):
            raise ValueError("bad patterns: every weight (and mined_weight, loop_weight) must be in [0, 1]")
        self.tags = {**DETECTOR_TAGS, **dict(tags or {})}
        self.mined_weight, self.loop_weight = mined_weight, loop_weight
        self.max_words, self.max_repeated_sentences = max_words, max_repeated_sentence_ratio
        self.max_repeated_trigrams = max_repeated_trigram_fraction
        self.refusal_share, self.max_hedge_share = refusal_share, max_hedge_share
        available: dict[str, Detector] = {
            "hedging": self._hedging,
            "boilerplate_refusal": self._boilerplate_refusal,
            "verbosity": self._verbosity,
            "repetition": self._repetition,
        }
        self.detectors = {name: available[name] for name in detectors}
        if patterns:
            mined = load_patterns(patterns)
        elif feedback:
            mined = mine_bad_patterns(
                read_feedback(feedback),
                min_count=min_count,
                top_k=top_k,
                max_n=max_n,
                min_z=min_z,
                prior_scale=prior_scale,
                totals=totals,
            )
        else:
            mined = []
        self.mined = {p.pattern: p for p in mined}
        self.max_n = max((p.n for p in mined), default=0)
        self.loop_patterns: dict[str, dict] = {}  # phrase -> state of eval/loop_patterns.py (closed loop)
        self.grams_n = self.max_n  # longest n-gram detect() needs: mined and loop patterns

    def set_loop_patterns(self, state: dict[str, dict]) -> None:
        """Phrases the closed loop mined from failing held-out answers (`update_loop_patterns`); each one
        an answer contains is a hit ("loop-mined", phrase, "loop", loop_weight). {} removes them all."""
        self.loop_patterns = {" ".join(words(p)): dict(info) for p, info in state.items() if words(p)}
        self.grams_n = max([self.max_n, *(len(p.split()) for p in self.loop_patterns)])

    # detectors: evidence string or None ----------------------------------------------------------
    def _hedging(self, text: str) -> str | None:
        hedge = first_match(HEDGES, text)
        if hedge is None:
            return None
        hedged = sum(first_match(HEDGES, s) is not None for s in sentences(text))
        if hedged >= 2 and hedged / len(sentences(text)) >= self.max_hedge_share:
            return hedge
        return None if has_substance(text) else hedge

    def _boilerplate_refusal(self, text: str) -> str | None:
        total = len(words(text))
        found = [(s, m) for s in sentences(text) if (m := first_match(REFUSALS, s)) and not has_substance(s)]
        if not total or not found:
            return None
        share = sum(len(words(s)) for s, _ in found) / total
        return found[0][1] if share >= self.refusal_share else None

    def _verbosity(self, text: str) -> str | None:
        n = len(words(text))
        if n > self.max_words:
            return f"{n} words (max {self.max_words})"
        ratio = repeated_sentence_ratio(text)
        if ratio > self.max_repeated_sentences:
            return f"{ratio:.0%} of sentences repeat an earlier one (max {self.max_repeated_sentences:.0%})"
        return None

    def _repetition(self, text: str) -> str | None:
        frac = repeated_ngram_fraction(words(text), 3)
        if frac > self.max_repeated_trigrams:
            return f"{frac:.0%} of word 3-grams repeat (max {self.max_repeated_trigrams:.0%})"
        return None

    # scoring -------------------------------------------------------------------------------------
    def detect(self, text: str) -> list[tuple[str, str, str, float]]:
        """(detector name, evidence, tag, weight) of every bad pattern in one answer."""
        hits = [
            (name, evidence, self.tags[name], self.weights[name])
            for name, detector in self.detectors.items()
            if (evidence := detector(text)) is not None
        ]
        if self.mined or self.loop_patterns:
            grams = ngram_set(words(text), self.grams_n)  # one pass covers both pattern lists
            for gram in sorted(grams & self.mined.keys()):
                hits.append(("mined", gram, self.mined[gram].tag, self.mined_weight))
            for gram in sorted((grams & self.loop_patterns.keys()) - self.mined.keys()):  # never twice
                hits.append(("loop-mined", gram, "loop", self.loop_weight))
        return hits

    def finding(self, name: str, evidence: str, tag: str) -> str:
        extra = ""
        if name == "mined":
            extra = f", z={self.mined[evidence].z:.2f}"
        elif name == "loop-mined":
            info = self.loop_patterns[evidence]
            step, count = info.get("mined_at"), info.get("failing_count")
            extra = f", mined at step {step} from {count} failing held-out answers"
        return f"bad pattern '{name}': \"{evidence}\" (tag: {tag}{extra})"

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        scores, findings = [], []
        for text in completions:
            if not text.strip():  # no answer is the pattern users dislike most: never a clean 1.0
                scores.append(0.0)
                findings.append(["bad pattern 'empty answer': the answer is empty (tag: empty)"])
                continue
            hits = self.detect(text)
            worst: dict[str, float] = {}
            for _, _, tag, weight in hits:
                worst[tag] = max(worst.get(tag, 0.0), weight)
            scores.append(math.prod(1.0 - w for w in worst.values()))
            findings.append([self.finding(name, evidence, tag) for name, evidence, tag, _ in hits])
        return ScoreResult.from_lists(scores, findings)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m quark_lightning.rewards.online",
        description="Mine word n-grams over-represented in disliked online answers "
        "(log-odds ratio with an informative Dirichlet prior).",
    )
    ap.add_argument("--input", default="bundled", help="online feedback JSONL ('bundled' = the bundled log)")
    ap.add_argument("--output", required=True, help="where to write the mined patterns (JSON)")
    ap.add_argument("--min-count", type=int, default=3, help="min. disliked responses containing a pattern")
    ap.add_argument("--top-k", type=int, default=20, help="max. number of patterns kept")
    ap.add_argument("--max-n", type=int, default=3, help="longest n-gram")
    ap.add_argument("--min-z", type=float, default=1.645, help="min. z-score of the log-odds ratio")
    ap.add_argument(
        "--prior-scale", type=float, default=1.0, help="Dirichlet prior weight relative to the data"
    )
    ap.add_argument(
        "--totals", choices=TOTALS, default="documents", help="log-odds totals (see the module doc)"
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {
        "min_count": args.min_count,
        "top_k": args.top_k,
        "max_n": args.max_n,
        "min_z": args.min_z,
        "prior_scale": args.prior_scale,
        "totals": args.totals,
    }
    try:
        records = read_feedback(args.input)
        patterns = mine_bad_patterns(records, **settings)
        save_patterns(patterns, args.output, resolve_feedback(args.input), settings)
    except (QuarkError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    disliked = sum(r["rating"] == -1 for r in records)
    print(f"{len(records)} rated responses ({disliked} disliked): {len(patterns)} patterns -> {args.output}")
    for p in patterns:
        print(
            f"  z={p.z:5.2f}  log-odds={p.log_odds:5.2f}  "
            f"{p.disliked_count:3d}/{p.liked_count:<3d}  [{p.tag}]  {p.pattern}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
