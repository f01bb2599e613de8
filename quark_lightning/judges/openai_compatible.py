"""A judge behind any OpenAI-compatible `/chat/completions` endpoint, asked concurrently with httpx.

One `complete` call sends its requests at once (at most `max_concurrency` in flight), so judging a step
costs about one round trip, not one per sample. Each request is bounded: `timeout_s` covers the whole
request (connect, send, wait, read); a timeout, a connection error, HTTP 429 or 5xx is retried up to
`max_retries` times after `backoff_s * 2**attempt` seconds times a random factor in [0.5, 1.5) (a
`Retry-After` header, when the server sends one, is honoured up to 30 s). Other 4xx answers are not
retried (the request itself is wrong). The longest a call can take is therefore about
`(max_retries + 1) * timeout_s` plus the backoff: nothing hangs.

The API key is read from the environment variable NAMED by `api_key_env` when each call starts and is
sent only in the Authorization header; it is never stored in the config, the cache, a log line or an
error message (error texts are scrubbed of it in case a server echoes it).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from quark_lightning.infra.errors import ConfigError
from quark_lightning.judges.client import Judge, JudgeReply, Messages
from quark_lightning.judges.settings import JudgeConfig

RETRY_STATUS = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER_S = 30.0


def run_coroutine(coro: Any) -> Any:
    """Run `coro` to completion from synchronous code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:  # e.g. inside Jupyter: a fresh loop in a worker thread
        return pool.submit(asyncio.run, coro).result()


def reply_text(payload: Any) -> str | None:
    """choices[0].message.content of a chat completion, or None when the payload is not one."""
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class OpenAICompatibleJudge(Judge):
    def __init__(self, config: JudgeConfig):
        super().__init__(config)
        if not config.model:
            raise ConfigError(
                "judge.model: judge=openai needs the model name the server serves "
                f"(GET {config.base_url.rstrip('/')}/models lists them). Fix: judge.model=<name>."
            )
        if config.api_key_env and not os.environ.get(config.api_key_env):
            raise ConfigError(
                f"judge.api_key_env names the environment variable {config.api_key_env}, which is not set. "
                f"Fix: export {config.api_key_env}=<your key>, or judge.api_key_env=null for a server "
                "without authentication."
            )
        self.url = config.base_url.rstrip("/") + "/chat/completions"

    # ------------------------------------------------------------------ secrets
    def _key(self) -> str | None:
        return os.environ.get(self.config.api_key_env) if self.config.api_key_env else None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    # ------------------------------------------------------------------ requests
    def _body(self, messages: Messages) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": list(messages),
            **self.config.decoding(),
        }
        if self.config.response_format:
            body["response_format"] = {"type": self.config.response_format}
        else:
            body.pop("response_format")
        return body

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(MAX_RETRY_AFTER_S, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return self.config.backoff_s * (2**attempt) * (0.5 + random.random())

    async def _ask(self, client: Any, gate: asyncio.Semaphore, messages: Messages) -> JudgeReply:
        import httpx

        cfg, last, retry_after = self.config, "no attempt made", None
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt - 1, retry_after))
            retry_after = None
            async with gate:
                self._count(requests=1)
                try:
                    resp = await asyncio.wait_for(
                        client.post(self.url, json=self._body(messages)), cfg.timeout_s
                    )
                except (TimeoutError, httpx.TimeoutException):
                    last = f"timed out after {cfg.timeout_s:g} s (judge.timeout_s)"
                    continue
                except httpx.HTTPError as err:  # connection refused or reset, DNS, protocol errors
                    last = f"{type(err).__name__}: {err}"
                    continue
            if resp.status_code in RETRY_STATUS:
                last, retry_after = (
                    f"HTTP {resp.status_code}: {resp.text[:200]}",
                    resp.headers.get("retry-after"),
                )
                continue
            if resp.status_code >= 400:
                return self._failed(f"HTTP {resp.status_code}: {resp.text[:300]} (not retried)")
            try:
                text = reply_text(resp.json())
            except ValueError:
                text = None
            if text is None:
                return self._failed(f"the reply is not a chat completion: {resp.text[:200]!r}")
            return JudgeReply(text)
        return self._failed(f"{last} (after {cfg.max_retries + 1} attempts)")

    def _failed(self, why: str) -> JudgeReply:
        return JudgeReply(None, error=self._scrub(f"{self.describe()}: {why}"))

    async def _ask_all(self, conversations: Sequence[Messages]) -> list[JudgeReply]:
        import httpx

        key = self._key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.config.max_concurrency)
        gate = asyncio.Semaphore(self.config.max_concurrency)
        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=self.config.timeout_s) as client:
            return list(await asyncio.gather(*(self._ask(client, gate, c) for c in conversations)))

    def _send(self, conversations: Sequence[Messages]) -> list[JudgeReply]:
        return run_coroutine(self._ask_all(conversations))
