"""A disk cache of judge replies: a repeated question, a resumed run or a re-scored file asks nothing twice.

Key: SHA-256 of the canonical JSON of (judge model, the full messages, the decoding settings). Neither
the endpoint nor any API key is part of the key or of the stored file, so the same question to the same
model through another server is a hit, and a cache directory can be shared without leaking secrets.

Layout: `<cache_dir>/<key[:2]>/<key>.json` holding {"model", "reply"}. Writes go to a temporary file
renamed into place, so concurrent ranks or an interrupted run never leave a half-written entry. Only
successful replies are stored (a timeout or an error is asked again next time).

A damaged entry (truncated, not UTF-8, not JSON, not {"reply": str}: a disk error, a copy cut short, a
hand edit) is skipped with a warning that names the file, and the question is asked again; the new
reply overwrites it. The cache is only an optimization, so losing an entry loses nothing but one
request, and one bad file among thousands must not stop a run. The first MAX_WARNINGS damaged entries
are named, then one line says that more were skipped; `damaged` counts them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

MAX_WARNINGS = 5  # damaged entries named one by one; the rest are only counted


def cache_key(model: str | None, messages: list[dict[str, Any]], decoding: dict[str, Any]) -> str:
    payload = {"model": model, "messages": messages, "decoding": decoding}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgeCache:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        self.hits = 0
        self.misses = 0
        self.damaged = 0  # entries skipped as damaged (counted in misses too)
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        reply, problem = None, None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            pass  # not asked yet
        except (OSError, ValueError, RecursionError) as err:  # damaged: asked again, the reply overwrites it
            problem = f"{type(err).__name__}: {err}"
        else:
            if isinstance(entry, dict) and isinstance(entry.get("reply"), str):
                reply = entry["reply"]
            else:
                problem = 'valid JSON, but not {"model": ..., "reply": "<text>"}'
        with self._lock:
            if reply is None:
                self.misses += 1
            else:
                self.hits += 1
            if problem is not None:
                self.damaged += 1
                count = self.damaged
        if problem is not None:
            self._warn(
                count,
                f"judge cache: skipping the damaged entry {path} ({problem[:200]}); the question is asked "
                "again and its reply replaces the file. Fix: nothing to do; if many entries are damaged, "
                f"delete {self.directory} (judge.cache_dir) to start the cache afresh.",
            )
        return reply

    def _warn(self, count: int, message: str) -> None:
        """Warn about the first MAX_WARNINGS damaged entries, then once that there are more."""
        if count <= MAX_WARNINGS:
            warnings.warn(message, stacklevel=3)
        elif count == MAX_WARNINGS + 1:
            warnings.warn(
                f"judge cache: more damaged entries in {self.directory}: skipped and asked again without a "
                "warning each (JudgeCache.damaged counts them).",
                stacklevel=3,
            )

    def put(self, key: str, model: str | None, reply: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"model": model, "reply": reply}, fh, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
