"""What every judge does: answer a batch of chat conversations, through the disk cache, counting.

A judge's `complete(conversations)` returns one JudgeReply per conversation: the reply text, or the
reason it has none (timed out, server error, connection refused, a reply that is not a chat completion).
It never raises for a single bad request: the scorer turns a failed reply into a failed sample, which
the matrix's guard (matrix/alignment_matrix.py) counts in `failures/<dim>` and handles under the dimension's
`on_failure` policy. Identical conversations in one batch are asked once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quark_lightning.judges.cache import JudgeCache, cache_key
from quark_lightning.judges.settings import JudgeConfig

Messages = list[dict[str, Any]]  # OpenAI chat messages: [{"role": "user", "content": "..."}, ...]


@dataclass(frozen=True)
class JudgeReply:
    text: str | None  # None when the judge gave no usable reply
    error: str | None = None  # why, naming the endpoint; None when `text` is set
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.text is not None


class Judge:
    """Base class: the cache and the counters. Subclasses implement `_send` for the cache misses."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.cache = JudgeCache(config.cache_dir) if config.cache_dir else None
        self.requests = 0  # requests actually sent (HTTP attempts, or local generations), retries included
        self.failures = 0  # conversations that ended without a usable reply
        self._lock = threading.Lock()

    def _count(self, requests: int = 0, failures: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.failures += failures

    def complete(self, conversations: Sequence[Messages]) -> list[JudgeReply]:
        keys = [cache_key(self.identity(), list(c), self.config.decoding()) for c in conversations]
        replies: dict[str, JudgeReply] = {}
        for key in dict.fromkeys(keys):  # unique, in order
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                replies[key] = JudgeReply(hit, cached=True)
        ask = [k for k in dict.fromkeys(keys) if k not in replies]
        first = {k: conversations[keys.index(k)] for k in ask}
        step = self.chunk_size()
        for start in range(0, len(ask), step):  # each chunk is cached as it comes back: a killed run resumes
            chunk = ask[start : start + step]
            sent = self._send([first[k] for k in chunk])
            for key, reply in zip(chunk, sent, strict=True):
                replies[key] = reply
                if reply.ok and self.cache is not None:
                    self.cache.put(key, self.identity(), reply.text)
            self._count(failures=sum(not r.ok for r in sent))
        return [replies[k] for k in keys]

    def chunk_size(self) -> int:
        """Conversations sent per `_send` call, each call's replies cached before the next: a local
        judge's batch, or enough requests to keep an HTTP judge's `max_concurrency` slots busy."""
        if self.config.kind == "local":
            return int(self.config.batch_size)
        return 4 * int(self.config.max_concurrency)

    def _send(self, conversations: Sequence[Messages]) -> list[JudgeReply]:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Counters since the judge was built: requests, cache_hits, cache_misses, failures."""
        return {
            "requests": self.requests,
            "cache_hits": self.cache.hits if self.cache is not None else 0,
            "cache_misses": self.cache.misses if self.cache is not None else 0,
            "failures": self.failures,
        }

    def identity(self) -> str | None:
        """The judge model as the cache key sees it (a local judge adds a fingerprint of its files)."""
        return self.config.model

    def describe(self) -> str:
        return self.config.describe()
