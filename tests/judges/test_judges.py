"""The judge client: config checks, the disk cache, concurrency, retries and faults over real HTTP.

The servers here are real sockets: FaultServer (http.server) misbehaves on purpose; the
`transformers serve` tests (test_judge_server.py) run the real model server.
"""

from __future__ import annotations

import threading

import pytest
from judge_fixtures import FaultServer, ScriptedJudge, completion, free_port

from quark_lightning.infra.errors import ConfigError
from quark_lightning.judges import JudgeConfig, build_judge
from quark_lightning.judges.cache import cache_key
from quark_lightning.judges.openai_compatible import OpenAICompatibleJudge
from quark_lightning.judges.verdicts import criteria_met_verdict, parse_json_object, parse_yes_no

ASK = [{"role": "user", "content": "Is 8 g of paracetamol a day safe? YES or NO."}]


def openai_judge(base_url: str, **settings) -> OpenAICompatibleJudge:
    settings = {"max_retries": 2, "backoff_s": 0.01, "timeout_s": 5.0, **settings}
    return OpenAICompatibleJudge(JudgeConfig(kind="openai", base_url=base_url, model="m", **settings))


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "settings, key",
    [
        ({"kind": "vllm"}, "judge.kind"),
        ({"max_concurrency": 0}, "judge.max_concurrency"),
        ({"timeout_s": -1}, "judge.timeout_s"),
        ({"max_retries": 1.5}, "judge.max_retries"),
        ({"temperature": -0.1}, "judge.temperature"),
        ({"base_url": "127.0.0.1:8000"}, "judge.base_url"),
        ({"api_key_env": "sk-abc123 key"}, "judge.api_key_env"),
        ({"response_format": "xml"}, "judge.response_format"),
        ({"kind": "openai"}, "judge.base_url: judge=openai needs the server's URL"),
    ],
)
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("(", r"\(")):
        JudgeConfig(**settings)


def test_unknown_key_and_missing_model_or_key_variable(monkeypatch):
    with pytest.raises(ConfigError, match=r"judge\.url: unknown key"):
        JudgeConfig.from_mapping({"kind": "openai", "url": "http://x"})
    with pytest.raises(ConfigError, match=r"judge\.model: judge=openai needs the model name"):
        build_judge({"kind": "openai", "base_url": "http://127.0.0.1:1/v1"})
    monkeypatch.delenv("QUARK_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="QUARK_TEST_NO_SUCH_KEY, which is not set"):
        build_judge(
            {
                "kind": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "model": "m",
                "api_key_env": "QUARK_TEST_NO_SUCH_KEY",
            }
        )
    with pytest.raises(ConfigError, match=r"judge\.model: judge=local needs a causal LM"):
        build_judge({"kind": "local"})


# ------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "text, met", [("YES", True), (" no.", False), ("Yes, it does", True), ("Maybe", None), ("", None)]
)
def test_parse_yes_no(text, met):
    assert parse_yes_no(text) is met


def test_parse_json_verdicts():
    assert parse_json_object('```json\n{"criteria_met": true, "explanation": "ok"}\n```') == {
        "criteria_met": True,
        "explanation": "ok",
    }
    assert parse_json_object('Sure! {"a": 1} trailing') == {"a": 1}
    assert parse_json_object("no json {here") is None
    from quark_lightning.judges.client import JudgeReply

    assert (
        criteria_met_verdict(JudgeReply('{"explanation": "calls 911", "criteria_met": false}')).met is False
    )
    bad = criteria_met_verdict(JudgeReply('{"criteria_met": "yes"}'))  # a string is not a boolean
    assert bad.met is None and "does not parse" in bad.error


# ------------------------------------------------------------------------------------------- cache
def test_cache_key_depends_on_model_messages_and_decoding_only():
    base = cache_key("m", ASK, {"temperature": 0.0, "max_tokens": 8})
    assert base == cache_key("m", [dict(ASK[0])], {"max_tokens": 8, "temperature": 0.0})  # order-free
    assert base != cache_key("m2", ASK, {"temperature": 0.0, "max_tokens": 8})
    assert base != cache_key("m", ASK, {"temperature": 0.0, "max_tokens": 9})
    assert base != cache_key(
        "m", [{"role": "user", "content": "other"}], {"temperature": 0.0, "max_tokens": 8}
    )


def test_second_pass_is_answered_from_the_disk_cache(tmp_path):
    judge = ScriptedJudge(lambda text: None if "fail" in text else "YES", cache_dir=str(tmp_path))
    asks = [[{"role": "user", "content": t}] for t in ("a", "b", "a", "fail")]
    first = judge.complete(asks)
    assert [r.text for r in first] == ["YES", "YES", "YES", None]
    assert judge.requests == 3  # "a" twice in one batch is asked once
    again = ScriptedJudge(lambda text: "NO", cache_dir=str(tmp_path))  # a new process, the same cache
    second = again.complete(asks)
    assert [r.text for r in second[:3]] == ["YES", "YES", "YES"] and all(r.cached for r in second[:3])
    assert again.requests == 1 and second[3].text == "NO"  # only the failure is asked again
    assert again.stats() == {"requests": 1, "cache_hits": 2, "cache_misses": 1, "failures": 0}


# ------------------------------------------------------------------------------------------- HTTP
def test_requests_go_out_concurrently_up_to_max_concurrency():
    """12 requests, max_concurrency 4, no timing involved. The server holds every request until 4 are in
    flight at once, then lets all through: a client that never has 4 out together gets no reply (the
    hold's timeout only keeps such a client from hanging the suite: HTTP 400, not retried, the test
    fails). At that moment nothing has been answered yet, so the requests the client has started
    (`judge.requests`, counted as each one passes the concurrency gate) are exactly those it has in
    flight: 4, or more for a client that lets more through at once (those all start before any byte is
    sent, so they are counted even while still on their way). A request is also counted in on arrival and
    out before its reply is written, so a client that keeps to 4 is never seen above 4."""
    lock, four_at_once = threading.Lock(), threading.Event()
    in_flight, peak, started = [0], [0], [0]

    def behaviour(n, body):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            if in_flight[0] == 4 and not four_at_once.is_set():
                started[0] = judge.requests
                four_at_once.set()
        released = four_at_once.wait(timeout=10.0)
        with lock:
            in_flight[0] -= 1
        if not released:
            return 400, "never 4 requests in flight at once", 0.0
        return 200, completion(f"reply {body['messages'][0]['content']}"), 0.0

    with FaultServer(behaviour) as server:
        judge = openai_judge(server.base_url, max_concurrency=4, timeout_s=60.0)
        replies = judge.complete([[{"role": "user", "content": str(i)}] for i in range(12)])
    assert [r.text for r in replies] == [f"reply {i}" for i in range(12)]
    assert four_at_once.is_set() and started[0] == 4 and peak[0] == 4 and judge.requests == 12
    body = server.requests[0][0]
    assert body["model"] == "m" and body["temperature"] == 0.0 and body["max_tokens"] == 64
    assert "response_format" not in body


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retryable_statuses_are_retried(status):
    with FaultServer(
        lambda n, body: (status, "busy", 0.0) if n < 2 else (200, completion("YES"), 0.0)
    ) as server:
        judge = openai_judge(server.base_url)
        (reply,) = judge.complete([ASK])
    assert reply.text == "YES" and judge.requests == 3


def test_a_server_that_keeps_failing_gives_an_error_naming_the_endpoint():
    with FaultServer(lambda n, body: (502, "bad gateway", 0.0)) as server:
        judge = openai_judge(server.base_url, max_retries=1)
        (reply,) = judge.complete([ASK])
    assert reply.text is None and judge.requests == 2
    assert reply.error == f"judge {server.base_url} (model m): HTTP 502: bad gateway (after 2 attempts)"


def test_client_errors_and_garbage_are_not_retried():
    with FaultServer(lambda n, body: (400, '{"error": "bad request"}', 0.0)) as server:
        judge = openai_judge(server.base_url)
        (reply,) = judge.complete([ASK])
    assert judge.requests == 1 and "HTTP 400" in reply.error and "not retried" in reply.error
    with FaultServer(lambda n, body: (200, "<html>oops</html>", 0.0)) as server:
        judge = openai_judge(server.base_url)
        (reply,) = judge.complete([ASK])
    assert judge.requests == 1 and "the reply is not a chat completion: '<html>oops</html>'" in reply.error


def test_a_slow_server_times_out_after_the_retries():
    with FaultServer(lambda n, body: (200, completion("late"), 3.0)) as server:
        judge = openai_judge(server.base_url, timeout_s=0.3, max_retries=1)
        (reply,) = judge.complete([ASK])
    assert reply.text is None and judge.requests == 2
    assert "timed out after 0.3 s (judge.timeout_s) (after 2 attempts)" in reply.error


def test_a_server_that_is_down_fails_fast():
    judge = openai_judge(f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    replies = judge.complete([ASK, ASK + [{"role": "user", "content": "again"}]])
    assert all(r.text is None and "ConnectError" in r.error for r in replies)
    assert judge.requests == 6 and judge.stats()["failures"] == 2


def test_the_api_key_is_sent_as_a_header_and_never_echoed(monkeypatch):
    secret = "sk-quark-test-0123456789abcdef"
    monkeypatch.setenv("QUARK_TEST_JUDGE_KEY", secret)
    with FaultServer(lambda n, body: (500, f"server echoed Bearer {secret}", 0.0)) as server:
        judge = openai_judge(server.base_url, api_key_env="QUARK_TEST_JUDGE_KEY", max_retries=0)
        (reply,) = judge.complete([ASK])
    headers = {k.lower(): v for k, v in server.requests[0][1].items()}
    assert headers["authorization"] == f"Bearer {secret}"
    assert secret not in reply.error and "***" in reply.error
    assert secret not in repr(judge.config) and secret not in judge.describe()


@pytest.mark.parametrize(
    "override, key",
    [
        ("judge.timeout_s=0", "judge.timeout_s: got 0"),
        ("judge.kind=vllm", "judge.kind: got 'vllm'"),
        ("+judge.api_key=sk-123", "judge.api_key: unknown key"),
    ],
)
def test_a_bad_judge_group_stops_a_run_before_anything_loads(override, key):
    from quark_lightning.config.validate import validate_config
    from tests.config.test_config import compose_cfg

    with pytest.raises(ConfigError, match=key):
        validate_config(compose_cfg("+experiment=smoke", "judge=openai", override))
    validate_config(
        compose_cfg("+experiment=smoke", "judge=openai", "judge.base_url=http://127.0.0.1:8000/v1")
    )
