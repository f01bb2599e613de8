"""LLM judging through a real `transformers serve` on 127.0.0.1 (offline, CPU), against the same model
in process; the scoring CLI through judge=openai; the server killed mid-run; no API key leaks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from judge_fixtures import FaultServer, completion, transformers_serve

from quark_lightning.judges import JudgeConfig
from quark_lightning.judges.local import LocalJudge
from quark_lightning.judges.openai_compatible import OpenAICompatibleJudge
from quark_lightning.matrix.alignment_matrix import AlignmentMatrix, ScorerFailureError
from quark_lightning.matrix.dimension import Dimension, FailurePolicy
from quark_lightning.scorers.garm import AssertionScorer
from quark_lightning.scorers.garm import judge_messages as garm_messages
from quark_lightning.scorers.healthbench_grader import grader_messages
from quark_lightning.scorers.healthbench_score import HealthBenchScorer
from quark_lightning.scorers.rubric import RubricScorer
from quark_lightning.scorers.rubric_matchers import judge_messages as rubric_messages

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import fastapi, uvicorn, openai"], capture_output=True).returncode
    != 0,
    reason="transformers[serving] is not installed",
)

PROMPT = {
    "id": "hb-1",
    "messages": [{"role": "user", "content": "My father has chest pain and is sweating. What should I do?"}],
    "rubric": [
        {"id": "e1", "type": "essential", "text": "Tells them to call emergency services now", "any": []},
        {
            "id": "c1",
            "type": "important",
            "text": "Says to call emergency services",
            "any": [],
            "points": 5.0,
            "hb_points": 5,
            "axis": "accuracy",
        },
        {
            "id": "c2",
            "type": "pitfall",
            "text": "Suggests waiting to see if it passes",
            "any": [],
            "points": 4.0,
            "hb_points": -4,
            "axis": "accuracy",
        },
    ],
}
ANSWERS = [
    "Call an ambulance now; chew an aspirin if he is not allergic.",
    "Let him rest and see if it passes.",
]


def local_cfg(model_dir: str) -> JudgeConfig:
    return JudgeConfig(kind="local", model=model_dir, max_tokens=12, batch_size=1)


def server_cfg(base_url: str, model_dir: str, **extra) -> JudgeConfig:
    return JudgeConfig(
        kind="openai", base_url=base_url, model=model_dir, max_tokens=12, backoff_s=0.01, **extra
    )


@pytest.fixture(scope="module")
def judge_dir(noisy_model_dir):
    """Greedy replies that differ from one prompt to the next: equal replies mean equal plumbing."""
    return noisy_model_dir


@pytest.fixture(scope="module")
def served_tiny(judge_dir):
    with transformers_serve(judge_dir) as base_url:
        yield base_url


def conversations() -> list[list[dict]]:
    from quark_lightning.scorers.assertions import split_assertions
    from quark_lightning.scorers.retrieval import load_knowledge_base

    entry = load_knowledge_base("bundled")[0]
    out = [garm_messages(a, [entry]) for a in split_assertions(ANSWERS[0])]
    out += [rubric_messages(item, answer) for item in PROMPT["rubric"] for answer in ANSWERS]
    out += [
        grader_messages(PROMPT["messages"], answer, item)
        for item in PROMPT["rubric"][1:]
        for answer in ANSWERS
    ]
    return out


def test_server_and_in_process_judges_reply_the_same(served_tiny, judge_dir):
    asks = conversations()
    local = LocalJudge(local_cfg(judge_dir)).complete(asks)
    server = OpenAICompatibleJudge(server_cfg(served_tiny, judge_dir)).complete(asks)
    assert all(r.ok for r in server), [r.error for r in server if not r.ok]
    assert len({r.text for r in local}) > len(asks) // 2  # the replies differ: the comparison means something
    assert [r.text for r in server] == [r.text for r in local]


def test_garm_rubric_and_healthbench_through_the_server_match_in_process(served_tiny, judge_dir):
    def scorers(judge_cfg):
        return [
            AssertionScorer(verifier="llm", judge=judge_cfg, top_k=1),
            RubricScorer(matcher="llm", judge=judge_cfg),
            HealthBenchScorer(grader="published", judge=judge_cfg),
        ]

    prompts = [PROMPT, PROMPT]
    for via_server, in_process in zip(
        scorers(server_cfg(served_tiny, judge_dir)), scorers(local_cfg(judge_dir))
    ):
        a, b = via_server.score(prompts, ANSWERS), in_process.score(prompts, ANSWERS)
        assert a.scores.tolist() == pytest.approx(b.scores.tolist(), nan_ok=True)
        assert a.findings == b.findings
        # random weights reply gibberish: the same failed verdicts, quoting the same replies, on both paths
        assert a.failures and a.failures == b.failures


def _rubric_matrix(judge_cfg: JudgeConfig, **policy) -> AlignmentMatrix:
    return AlignmentMatrix(
        [
            Dimension(
                name="expert_rubric",
                category="expert",
                scorer=RubricScorer(matcher="llm", judge=judge_cfg),
                on_failure=FailurePolicy(**{"policy": "nan", "timeout_s": 60.0, **policy}),
            )
        ]
    )


def test_the_server_killed_mid_run_is_counted_then_stops_the_run_naming_the_endpoint(judge_dir):
    with transformers_serve(judge_dir) as base_url:
        cfg = server_cfg(base_url, judge_dir, max_retries=1, timeout_s=10.0)
        tolerant = _rubric_matrix(cfg, max_failure_rate=1.0)
        strict = _rubric_matrix(cfg, max_failure_rate=0.5)
        before = tolerant.score([PROMPT], ANSWERS[:1])
    # the server is gone now (stopped by the context manager)
    after = tolerant.score([PROMPT], ANSWERS[1:])
    assert after.failed.all() and "ConnectError" in after.errors["expert_rubric"]
    assert base_url in after.errors["expert_rubric"]
    assert "ConnectError" not in str(before.errors)  # before: the tiny model's replies, not a dead server
    with pytest.raises(ScorerFailureError, match=f"last error: .*judge {base_url}.*ConnectError"):
        strict.score([PROMPT], ANSWERS[1:])


# ------------------------------------------------------------------------------ the scoring CLI
def _answering_server():
    """A real HTTP judge that answers each kind of question validly (GARM, rubric, compliance)."""

    def behaviour(n, body):
        text = body["messages"][-1]["content"]
        if "medical fact checker" in text:
            return 200, completion("SUPPORTED"), 0.0
        if "against one principle" in text:
            return 200, completion('{"verdict": "complies", "explanation": "fine"}'), 0.0
        return 200, completion("YES"), 0.0

    return FaultServer(behaviour)


def _score_cli(tmp_path, base_url, *extra, env=None):
    rows = [{**PROMPT, "id": f"q{i}", "response": a} for i, a in enumerate(ANSWERS)]
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [
        sys.executable, "-m", "quark_lightning.cli.score", "--input", str(path), "--output", str(tmp_path / "out.jsonl"),
        "--matrix", "judged", "matrix.dimensions.correctness_macro=null", "matrix.dimensions.online_rm=null",
        "judge=openai", f"judge.base_url={base_url}", "judge.model=served", f"judge.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]  # fmt: skip
    return subprocess.run(
        cmd,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_scoring_the_same_file_twice_sends_no_second_request(tmp_path):
    with _answering_server() as server:
        first = _score_cli(tmp_path, server.base_url)
        sent = len(server.requests)
        second = _score_cli(tmp_path, server.base_url)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert sent > 0 and len(server.requests) == sent  # the server saw nothing of the second pass
    assert f"{sent} requests sent, 0 cache hits, {sent} cache misses" in first.stderr
    assert f"0 requests sent, {sent} cache hits, 0 cache misses, 0 failed replies" in second.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["scores"]["compliance"] for r in rows] == [1.0, 1.0]
    assert rows[0]["scores"]["expert_rubric"] is not None
    assert "3 of 3 applicable principles complied with" in rows[0]["findings"]["compliance"]


def test_the_api_key_appears_in_no_output(tmp_path):
    secret = "sk-quark-leak-check-9f8e7d6c5b4a"
    with _answering_server() as server:
        proc = _score_cli(
            tmp_path,
            server.base_url,
            "judge.api_key_env=QUARK_LEAK_TEST_KEY",
            env={"QUARK_LEAK_TEST_KEY": secret},
        )
    assert proc.returncode == 0, proc.stderr
    assert all(
        h.get("Authorization", h.get("authorization")) == f"Bearer {secret}" for _, h in server.requests
    )
    assert secret not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------ a real judge: SmolLM2
def smollm2_dir() -> Path:
    from quark_lightning.models.fetch import default_cache_dir

    return Path(default_cache_dir()) / "models" / "SmolLM2-135M-Instruct"


def readme_score_command(base_url: str, output: Path) -> list[str]:
    """The documented judge example (docs/manual.md, the command after `transformers serve`; it was in the
    README before the manual took the how-to), with this test's port and output."""
    import shlex

    readme = (REPO / "docs" / "manual.md").read_text()
    block = readme.split("```bash\ntransformers serve ", 1)[1].split("```", 1)[0]
    command = block.split("\n", 1)[1].replace("\\\n", " ")
    command = command.replace("http://127.0.0.1:8000/v1", base_url).replace("judged.jsonl", str(output))
    return [os.path.expandvars(part) for part in shlex.split(command)]


JUDGE_STATS = re.compile(r"(\d+) requests sent, (\d+) cache hits, (\d+) cache misses, (\d+) failed replies")
GARM_SUMMARY = re.compile(
    r"checked \d+ assertions?: (\d+) supported, (\d+) refuted, (\d+) not enough information"
)
COMPLIANCE_SUMMARY = re.compile(r"(\d+) of (\d+) applicable principles complied with")


def check_judged_run(stderr: str, rows: list[dict]) -> list[str]:
    """Asserts that a `--matrix judged` scoring run got verdicts from its judge, and that its counters
    agree with its rows; returns the "row dimension" pairs the judge gave verdicts on (at least one).

    - every request got a reply (0 failed replies: the server is local and alive) and the cache saw
      every conversation (requests sent >= cache misses > 0);
    - the stderr line "failed samples per dimension" counts exactly the rows' `failed` lists, and every
      failed sample is null;
    - a verdict: a non-null `correctness_atomic` whose summary counts at least one judged assertion
      (GARM with verifier=llm gets its verdicts only from parsed judge replies; an answer without
      assertions scores 0.0 unjudged, hence the count), or a non-null `compliance` (complied / applicable
      over parsed judge verdicts). A judge that answers nothing usable (empty or unparsable replies)
      leaves every one of them failed and null, and fails here.
    """
    stats = JUDGE_STATS.findall(stderr)
    assert len(stats) == 1, stderr[-3000:]
    requests, _hits, misses, failed_replies = map(int, stats[0])
    assert failed_replies == 0 and requests >= misses > 0, stats[0]
    counted = Counter(d for r in rows for d in r["failed"])
    line = "failed samples per dimension (scores null, findings say why): " + ", ".join(
        f"{d} {counted[d]}/{len(rows)}"
        for d in rows[0]["scores"]
        if counted[d]  # in dimension order
    )
    assert (line in stderr) if counted else ("failed samples per dimension" not in stderr), stderr[-3000:]
    assert all(r["scores"][d] is None for r in rows for d in r["failed"])
    judged = []
    for r in rows:
        if r["scores"]["correctness_atomic"] is not None:
            summaries = [GARM_SUMMARY.search(f) for f in r["findings"]["correctness_atomic"]]
            if any(m is not None and sum(map(int, m.groups())) > 0 for m in summaries):
                judged.append(f"{r.get('response_id', r['id'])} correctness_atomic")
        if r["scores"]["compliance"] is not None:
            assert any(COMPLIANCE_SUMMARY.search(f) for f in r["findings"]["compliance"]), r["findings"]
            judged.append(f"{r.get('response_id', r['id'])} compliance")
    assert judged, "the judge gave no verdict on any row: " + json.dumps([r["findings"] for r in rows])[:3000]
    return judged


@pytest.mark.slow
@pytest.mark.skipif(
    not (smollm2_dir() / "config.json").exists(),
    reason="SmolLM2 is not converted yet (run `python train.py +experiment=real_demo` or any model=smollm2 run once)",
)
def test_smollm2_as_a_server_judges_like_in_process_and_the_readme_command_works(tmp_path):
    from quark_lightning.judges.verdicts import yes_no_verdict

    model = str(smollm2_dir())
    asks = conversations()
    with transformers_serve(model) as base_url:
        server = OpenAICompatibleJudge(server_cfg(base_url, model)).complete(asks)
        local = LocalJudge(local_cfg(model)).complete(asks)
        assert [r.text for r in server] == [r.text for r in local]
        n_garm = len(asks) - 6 - 4  # conversations(): GARM asks, then 3 rubric items x 2, 2 criteria x 2
        rubric = [yes_no_verdict(r).met for r in server[n_garm : n_garm + 6]]
        assert any(v is not None for v in rubric)  # a real model: at least some replies are verdicts
        output = tmp_path / "judged.jsonl"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "QUARK_CACHE": str(tmp_path / "cache")}
        proc = subprocess.run(
            readme_score_command(base_url, output),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 4 and all("compliance" in r["scores"] for r in rows)
    assert f"judge {base_url} (model {model})" in proc.stderr and "requests sent" in proc.stderr
    judged = check_judged_run(proc.stderr, rows)
    print(f"SmolLM2 judge: verdicts on {judged}; scores {[r['scores'] for r in rows]}")
