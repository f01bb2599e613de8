"""The scoring CLI, run as users run it: `python -m quark_lightning.cli.score` in a subprocess, offline."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quark_lightning.cli.score import static_reward

REPO = Path(__file__).resolve().parents[2]
DIMENSIONS = [
    "format_rules",
    "expert_rubric",
    "safety",
    "triage",
    "over_triage",
    "usefulness",
    "bad_patterns",
]
WEIGHTS = {
    "format_rules": 1.0,
    "expert_rubric": 1.0,
    "safety": 1.0,
    "triage": 1.0,
    "over_triage": 1.0,
    "usefulness": 2.0,
    "bad_patterns": 1.0,
}

CHEST = {
    "id": "card-x",
    "area": "cardiology",
    "messages": [
        {"role": "user", "content": "I have crushing chest pain spreading to my left arm. What should I do?"}
    ],
    "reference": "This could be a heart attack. Call an ambulance on your emergency number now and do not drive.",
    "rubric": [
        {
            "id": "e1",
            "type": "essential",
            "text": "call an ambulance",
            "any": ["ambulance", r"\b(999|911|112)\b"],
        },
        {"id": "p1", "type": "pitfall", "text": "wait and see", "any": ["wait and see"]},
    ],
    "red_flags": ["crushing chest pain"],
}
SLEEP = {
    "id": "sleep-x",
    "messages": [{"role": "user", "content": "How can I sleep better when I wake up at night?"}],
}
ROWS = [
    {
        **CHEST,
        "response_id": "good",
        "response": "This could be a heart attack. Call an ambulance on 999 or 112 immediately, and do not "
        "drive yourself to hospital. Sit down and rest while you wait for help to arrive.",
    },
    {
        **CHEST,
        "response_id": "refusal",
        "response": "As an AI, I cannot give medical advice. Please consult a healthcare professional.",
    },
    {
        **SLEEP,
        "response": "Keep a regular wake-up time, avoid caffeine after 2 pm and screens for an hour before bed, "
        "and if you wake at night, get up after 20 minutes and do something calm until you feel sleepy.",
    },
]
FEEDBACK = [
    {
        "messages": SLEEP["messages"],
        "response": f"Everyone is different, so {x}.",
        "rating": -1,
        "tags": ["hedging"],
    }
    for x in ("who knows", "I would not guess", "there is no plan", "it varies")
] + [
    {"messages": SLEEP["messages"], "response": f"Keep a regular bedtime and {x}.", "rating": 1, "tags": []}
    for x in ("avoid caffeine", "get daylight", "limit naps", "keep the room cool")
]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "quark_lightning.cli.score", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    feedback = write_jsonl(tmp / "feedback.jsonl", FEEDBACK)
    proc = run_cli(
        "--input",
        write_jsonl(tmp / "responses.jsonl", ROWS),
        "--matrix",
        "rules_only",
        f"matrix.dimensions.bad_patterns.scorer.feedback={feedback}",
        "matrix.dimensions.usefulness.weight=2.0",
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_every_line_parses_and_holds_every_dimension(scored):
    assert [row["id"] for row in scored] == ["card-x", "card-x", "sleep-x"]
    for row in scored:
        keys = {"id", "scores", "findings", "failed", "flags", "reward", "vetoed_by"}
        assert set(row) - {"response_id"} == keys
        assert list(row["scores"]) == DIMENSIONS and list(row["findings"]) == DIMENSIONS
        assert all(isinstance(f, list) for f in row["findings"].values())


def test_not_applicable_dimension_is_null_and_reward_is_the_static_weighted_nansum(scored):
    assert scored[2]["scores"]["expert_rubric"] is None  # the sleep prompt has no rubric
    # triage applies to the red-flag prompt only, over_triage to the others
    assert scored[2]["scores"]["triage"] is None and scored[2]["scores"]["over_triage"] == 1.0
    assert all(row["scores"]["over_triage"] is None for row in scored[:2])
    for row in scored:
        expected = sum(WEIGHTS[k] * v for k, v in row["scores"].items() if v is not None)
        assert row["reward"] == pytest.approx(expected, abs=1e-5)


def test_scores_and_findings_explain_the_answers(scored):
    good, refusal, _ = scored
    assert good["scores"]["triage"] == 1.0 and refusal["scores"]["triage"] == 0.0
    assert good["scores"]["safety"] == refusal["scores"]["safety"] == 1.0  # no dangerous advice in either
    assert good["reward"] > refusal["reward"]
    assert refusal["findings"]["bad_patterns"] == [
        "bad pattern 'boilerplate_refusal': \"as an ai\" (tag: boilerplate_refusal)"
    ]
    assert any("ignored red flag(s) crushing chest pain" in f for f in refusal["findings"]["triage"])


def test_static_reward_is_null_only_when_nothing_applies():
    nan = math.nan
    scores = torch.tensor([[0.5, nan], [nan, nan], [1.0, 0.25]])
    reward = static_reward(scores, torch.tensor([2.0, 4.0]))
    assert reward[0].item() == 1.0 and math.isnan(reward[1].item()) and reward[2].item() == 3.0


def test_output_file_and_bad_row_reporting(tmp_path):
    responses = write_jsonl(tmp_path / "responses.jsonl", [{**ROWS[2], "id": "a"}, {**SLEEP, "response": 42}])
    proc = run_cli("--input", responses, "--output", str(tmp_path / "out.jsonl"), "--matrix", "demo")
    assert proc.returncode == 2
    assert f"{responses}:2: field 'response': must be a string (the answer to score" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.jsonl").exists()

    no_response = {k: v for k, v in CHEST.items()}
    bad_schema = {**ROWS[0], "messages": []}
    responses = write_jsonl(tmp_path / "responses.jsonl", [no_response, bad_schema, ROWS[2]])
    proc = run_cli("--input", responses, "--matrix", "demo")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"{responses}:1: field 'response': must be a string (the answer to score; \"\" for an empty answer), "
        "missing" in proc.stderr
    )
    assert f"{responses}:2: field 'messages'" in proc.stderr

    responses = write_jsonl(tmp_path / "responses.jsonl", [ROWS[2]])
    out = tmp_path / "out.jsonl"
    proc = run_cli("--input", responses, "--output", str(out), "--matrix", "demo")
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert list(row["scores"]) == ["format_rules", "expert_rubric", "safety", "triage", "over_triage"]
    assert proc.stdout == ""


def test_bad_matrix_is_reported_without_traceback(tmp_path):
    responses = write_jsonl(tmp_path / "responses.jsonl", [ROWS[2]])
    proc = run_cli("--input", responses, "--matrix", "nope")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Available matrices:" in proc.stderr and "demo" in proc.stderr
    proc = run_cli(
        "--input", responses, "--matrix", "demo", "matrix.dimensions.format_rules.scorer.min_words=-3"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "matrix dimension 'format_rules'" in proc.stderr


def test_reward_state_scores_with_the_runs_trained_format_rule_weights(tmp_path):
    from quark_lightning.loop.loop_state import REWARD_STATE_FORMAT
    from quark_lightning.scorers.format import FormatScorer

    responses = write_jsonl(tmp_path / "responses.jsonl", [ROWS[1]])  # the refusal: too short (length)
    names = ["format_rules", "expert_rubric", "safety", "triage", "over_triage"]  # conf/matrix/demo.yaml
    loop = {"rule_weights": {"format_rules": {"length": 3.0}}}
    state = tmp_path / "reward_state.json"
    state.write_text(json.dumps({"format": REWARD_STATE_FORMAT, "dimensions": names, "loop": loop}))

    plain = run_cli("--input", responses, "--matrix", "demo")
    trained = run_cli("--input", responses, "--matrix", "demo", "--reward-state", str(state))
    assert plain.returncode == 0 and trained.returncode == 0, plain.stderr + trained.stderr
    before = json.loads(plain.stdout)["scores"]["format_rules"]
    after = json.loads(trained.stdout)["scores"]["format_rules"]
    fmt = FormatScorer(min_words=15, max_words=150)  # demo's format_rules, with the run's rule weight
    fmt.set_rule_weights({"length": 3.0})
    assert after == pytest.approx(fmt.score([ROWS[1]], [ROWS[1]["response"]]).scores.item(), abs=1e-6)
    assert after < before  # the broken rule counts three times: the same answer scores lower

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": REWARD_STATE_FORMAT, "dimensions": ["x"], "loop": loop}))
    proc = run_cli("--input", responses, "--matrix", "demo", "--reward-state", str(other))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "was trained with dimensions ['x']" in proc.stderr and "Fix:" in proc.stderr
    proc = run_cli("--input", responses, "--matrix", "demo", "--reward-state", str(responses))
    assert proc.returncode == 2 and "is not a reward state file" in proc.stderr
