"""Bad patterns mined from users' dislikes: word n-grams over-represented in disliked answers.

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
refusal and verbose answers (tests/scorers/test_online_usefulness.py), (documents, s = 1) recovers exactly the
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

Patterns are saved to / loaded from JSON (`save_patterns`, `load_patterns`); the scorer that turns
them into a reward is `BadPatternScorer` (scorers/online.py), the feedback log is read by
data/feedback.py.

CLI: `python -m quark_lightning.scorers.online --input FEEDBACK.jsonl --output patterns.json` (or
`python -m quark_lightning.scorers.pattern_mining ...`, the same command).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from quark_lightning.data.feedback import read_feedback, resolve_feedback
from quark_lightning.data.schema import DataValidationError
from quark_lightning.infra.errors import QuarkError
from quark_lightning.infra.text import words
from quark_lightning.scorers.lexicon import STOPWORDS

TOTALS = ("documents", "ngrams")
MINING_METHOD = "log-odds ratio, informative Dirichlet prior (Monroe et al. 2008), document frequencies"


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


def group_totals(
    docs: Sequence[tuple[set[str], int]],
    y_b: torch.Tensor,
    y_g: torch.Tensor,
    order: torch.Tensor,
    max_n: int,
    totals: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) totals n_b, n_g: responses per group ("documents") or the group's n-grams of that order."""
    if totals == "documents":
        n_b = torch.full_like(y_b, sum(rating == -1 for _, rating in docs))  # (V,) responses per group
        n_g = torch.full_like(y_g, sum(rating == 1 for _, rating in docs))  # (V,)
    else:
        n_b = torch.zeros(max_n, dtype=torch.float64).index_add_(0, order, y_b)[order]  # (V,) per order
        n_g = torch.zeros(max_n, dtype=torch.float64).index_add_(0, order, y_g)[order]  # (V,)
    return n_b, n_g


def rank_candidates(
    candidates: list[int],
    vocab: list[str],
    z: torch.Tensor,
    y_b: torch.Tensor,
    order: torch.Tensor,
    stopwords: frozenset[str],
) -> list[int]:
    """Best first: z, then disliked count, then fewer stopwords at the ends, then longer, then alphabetical."""
    return sorted(
        candidates,
        key=lambda i: (
            -round(z[i].item(), 9),
            -y_b[i].item(),
            edge_stopwords(vocab[i], stopwords),
            -order[i].item(),
            vocab[i],
        ),
    )


def disliked_postings(
    docs: Sequence[tuple[set[str], int]], records: Sequence[dict[str, Any]], wanted: set[str]
) -> tuple[dict[str, list[int]], list[list[str]]]:
    """For each wanted n-gram the disliked responses containing it (their index among the disliked
    ones), and every disliked response's tags."""
    disliked = [
        (grams, list(r.get("tags") or [])) for (grams, rating), r in zip(docs, records) if rating == -1
    ]
    postings: dict[str, list[int]] = {g: [] for g in wanted}
    for j, (grams, _) in enumerate(disliked):
        for g in grams & wanted:
            postings[g].append(j)
    return postings, [t for _, t in disliked]


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
    n_b, n_g = group_totals(docs, y_b, y_g, order, max_n, totals)
    everywhere = (y_b == n_b) & (y_g == n_g)  # (V,) in every response: no contrast (and 0/0 below)
    delta, z = log_odds_dirichlet(y_b, y_g, n_b, n_g, prior_scale)
    keep = (y_b >= min_count) & (delta > 0) & (z >= min_z) & ~everywhere  # (V,)
    candidates = [i for i in keep.nonzero().flatten().tolist() if is_candidate(vocab[i], stopwords)]
    candidates = rank_candidates(candidates, vocab, z, y_b, order, stopwords)
    postings, tags = disliked_postings(docs, records, {vocab[i] for i in candidates})
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
# CLI
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m quark_lightning.scorers.online",
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
