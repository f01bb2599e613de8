"""Judges for tests: a real `transformers serve` process, a real HTTP server that misbehaves on purpose,
and a scripted in-memory judge for hand-checked scorer logic."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from quark_lightning.judges import JudgeConfig
from quark_lightning.judges.client import Judge, JudgeReply
from quark_lightning.judges.local_server import free_port, transformers_serve

__all__ = ["FaultServer", "ScriptedJudge", "completion", "free_port", "transformers_serve"]


class ScriptedJudge(Judge):
    """Replies `script(last user message)`; a None from the script is a failed request."""

    def __init__(self, script: Callable[[str], str | None], cache_dir: str | None = None):
        super().__init__(JudgeConfig(kind="local", model="scripted", cache_dir=cache_dir))
        self.script = script
        self.asked: list[str] = []

    def _send(self, conversations):
        self._count(requests=len(conversations))
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            self.asked.append(text)
            reply = self.script(text)
            out.append(JudgeReply(reply) if reply is not None else JudgeReply(None, error="scripted failure"))
        return out


class FaultServer:
    """A real HTTP server speaking the chat-completions protocol, with a behaviour per request.

    `behaviour(n, body) -> (status, body_text, delay_s)` for the n-th request (from 0). Records every
    request's JSON body and headers in `requests`.
    """

    def __init__(self, behaviour: Callable[[int, dict], tuple[int, str, float]]):
        self.behaviour = behaviour
        self.requests: list[tuple[dict, dict]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    n = len(outer.requests)
                    outer.requests.append((body, dict(self.headers)))
                status, text, delay = outer.behaviour(n, body)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    self.wfile.write(text.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(text: str) -> str:
    """A chat-completions response body whose reply is `text`."""
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
