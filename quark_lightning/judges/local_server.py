"""Start a local OpenAI-compatible judge server: `transformers serve` (pip install "transformers[serving]").

    with transformers_serve("/path/to/model") as base_url:   # http://127.0.0.1:PORT/v1
        ... judge=openai judge.base_url=base_url judge.model=/path/to/model ...

Used by the tests and benchmarks/judge_throughput.py; for a long-lived server run the command itself:
`transformers serve /path/to/model --host 127.0.0.1 --port 8000`. The server is pinned to that model
(requests must name it as `model`), runs offline with HF_HUB_OFFLINE=1, and is stopped (SIGTERM, then
SIGKILL after 20 s) when the block ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def transformers_serve(
    model_dir: str, ready_timeout_s: float = 180.0, extra_args: Sequence[str] = (), threads: int | None = 1
) -> Iterator[str]:
    """`transformers serve MODEL_DIR` on 127.0.0.1 (offline, CPU, `threads` torch threads; None = the
    caller's setting); yields its base URL and stops the server when the block ends. The server's log
    goes to a temporary file (a pipe nobody reads would fill up and block it) and is quoted if it fails
    to start."""
    import httpx

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe) if exe.exists() else "transformers", "serve", model_dir, "--host", "127.0.0.1"]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--device", "cpu", *extra_args],
        env=env,
        stdout=log,
        stderr=log,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"transformers serve exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve was not ready after {ready_timeout_s:g} s")
            time.sleep(0.5)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
