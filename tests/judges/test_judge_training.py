"""Training with an LLM-judged dimension: through a judge server (counters logged, no API key anywhere in
the run directory), and with an in-process judge (a frozen module of the GRPO module)."""

from __future__ import annotations

import re

import pytest
from judge_fixtures import FaultServer, completion

from tests.cli.test_train_e2e import event_tags, train

pytestmark = pytest.mark.slow

SECRET = "sk-quark-train-leak-check-5a4b3c2d1e"
JUDGED_RUBRIC = ["matrix.dimensions.expert_rubric.scorer.matcher=llm", "trainer.max_steps=2"]


def test_training_through_a_judge_server_logs_counters_and_leaks_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("QUARK_TRAIN_JUDGE_KEY", SECRET)
    with FaultServer(lambda n, body: (200, completion("YES" if n % 2 else "NO"), 0.0)) as server:
        proc = train(
            tmp_path,
            *JUDGED_RUBRIC,
            "judge=openai",
            f"judge.base_url={server.base_url}",
            "judge.model=served-judge",
            "judge.api_key_env=QUARK_TRAIN_JUDGE_KEY",
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(server.requests) > 0
    assert {h.get("Authorization") for _, h in server.requests} == {f"Bearer {SECRET}"}
    run_dir = tmp_path / "run"
    assert {"judge/requests", "judge/cache_hits", "judge/cache_misses", "judge/failures"} <= event_tags(
        run_dir
    )
    assert SECRET not in proc.stdout + proc.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.name == "config.yaml" for p in files)
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
    assert "api_key_env: QUARK_TRAIN_JUDGE_KEY" in (run_dir / ".hydra" / "config.yaml").read_text()


def count(text: str) -> float:
    """'35.0 K' -> 35000.0 (Lightning's summary units)."""
    text = text.replace(" ", "")
    return float(text.rstrip("KM")) * {"K": 1e3, "M": 1e6}.get(text[-1], 1)


def test_an_in_process_judge_is_a_frozen_module_of_the_run(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    judge_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    proc = train(
        tmp_path,
        *JUDGED_RUBRIC,
        "judge=local",
        f"judge.model={tiny_model_dir}",
        "judge.max_tokens=4",
        "matrix.on_failure.max_failure_rate=1.0",  # random weights reply no YES/NO
        "trainer.enable_model_summary=true",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    # Lightning's model summary: the judge sits under reward_models, counted as non-trainable
    row = re.search(r"reward_models\s*[|│]\s*ModuleDict\s*[|│]\s*([\d.]+\s*[KM]?)", out)
    assert row, out[-3000:]
    frozen = re.findall(r"Non-trainable params:\s*([\d.]+\s*[KM]?)", out)[-1]  # the GRPO fit's summary
    value, frozen_value = count(row.group(1)), count(frozen)
    assert value >= judge_params * 0.95  # the judge's weights are under reward_models ...
    assert frozen_value >= value  # ... and counted as non-trainable (with the frozen reference)
    assert "failures_total/expert_rubric" in event_tags(tmp_path / "run")
