"""vLLM under Lightning's own launcher: with 2 ranks the engine's `external_launcher` needs RANK, WORLD_SIZE
and LOCAL_RANK, and Lightning's launcher never sets RANK. A real 2-process `ddp` launch (gloo, CPU) in which
vLLM is a recorder (tests/scripts/vllm_rank_run.py) shows what vLLM would be started with."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_each_rank_starts_vllm_with_its_rank_from_the_process_group(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "tests/scripts/vllm_rank_run.py", str(tmp_path)],
        cwd=REPO,
        env=dict(env, PL_DISABLE_FORK="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["env"]["RANK"] == str(rank) and seen["env"]["WORLD_SIZE"] == "2"
        assert seen["env"]["LOCAL_RANK"] == str(rank)  # one node: Lightning's local rank
        assert seen["env"]["MASTER_ADDR"] and seen["env"]["MASTER_PORT"]  # Lightning's own
        assert seen["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the engine core in this process
        assert seen["kwargs"]["distributed_executor_backend"] == "external_launcher"
        assert seen["kwargs"]["logprobs_mode"] == "processed_logprobs"
        assert seen["model"] == "/models/policy"
        assert seen["kwargs"]["seed"] == rank  # seed 0 + rank: the ranks draw different answers
        assert seen["trainer_rng_kept"]  # vLLM's reseed at start-up did not change the trainer's streams


def test_tensor_parallel_engines_across_training_ranks_are_refused(monkeypatch):
    import sys
    import types

    from quark_lightning.rollout import vllm_engine

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=None))
    monkeypatch.setattr(vllm_engine, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_engine, "world_size", lambda: 2)
    monkeypatch.setenv(vllm_engine.IN_PROCESS_ENV, "0")  # llm() sets it: recorded, so it is put back
    engine = vllm_engine.VLLMEngine(tensor_parallel_size=2)
    policy = types.SimpleNamespace(config=types.SimpleNamespace(_name_or_path="/models/policy"))
    with pytest.raises(ValueError, match="tensor_parallel_size=2 would make ranks share one engine"):
        engine.llm(policy)


def test_a_rank_that_disagrees_with_the_environment_is_refused(monkeypatch):
    from quark_lightning.rollout import vllm_engine

    monkeypatch.setattr("torch.distributed.get_rank", lambda: 1)
    monkeypatch.setattr("torch.distributed.get_world_size", lambda: 2)
    for key, value in (("LOCAL_RANK", "1"), ("WORLD_SIZE", "2"), ("RANK", "0")):
        monkeypatch.setenv(key, value)  # recorded, so the test leaves the environment as it found it
    with pytest.raises(RuntimeError, match="RANK=0 in the environment, but this process is rank 1"):
        vllm_engine.set_launcher_env()
    monkeypatch.delenv("RANK")
    assert vllm_engine.set_launcher_env() == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert os.environ["RANK"] == "1"
