"""A disk cache of judge replies: a repeated question, a resumed run or a re-scored file asks nothing twice.

Key: SHA-256 of the canonical JSON of (judge model, the full messages, the decoding settings). Neither
the endpoint nor any API key is part of the key or of the stored file, so the same question to the same
model through another server is a hit, and a cache directory can be shared without leaking secrets.

Layout: `<cache_dir>/<key[:2]>/<key>.json` holding {"model", "reply"}. Writes go to a temporary file
renamed into place, so concurrent ranks or an interrupted run never leave a half-written entry. Only
successful replies are stored (a timeout or an error is asked again next time).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any


def cache_key(model: str | None, messages: list[dict[str, Any]], decoding: dict[str, Any]) -> str:
    payload = {"model": model, "messages": messages, "decoding": decoding}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgeCache:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
            reply = (
                entry["reply"] if isinstance(entry, dict) and isinstance(entry.get("reply"), str) else None
            )
        except (OSError, ValueError):
            reply = None  # absent, or unreadable: ask again (the new reply overwrites it)
        with self._lock:
            if reply is None:
                self.misses += 1
            else:
                self.hits += 1
        return reply

    def put(self, key: str, model: str | None, reply: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"model": model, "reply": reply}, fh, ensure_ascii=False)
        os.replace(tmp, path)
