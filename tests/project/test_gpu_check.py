"""scripts/gpu_check.sh, prepared without a GPU: its CPU-side preparation composes every config it needs.

`--prepare-only` (fast) must compose the three training runs as train.py will, with the trainer on the
GPU (a wrong override order would silently train on CPU), validate them and build their strategies,
instantiate the rollout engine, and build the ~0.5 B Llama's config without allocating it.
`--exercise-on-cpu` (slow) runs the whole script at toy sizes on CPU, so its training, benchmark and
report code has run before any device minute is spent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def gpu_check(*args, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_prepare_only_composes_every_run_for_the_gpu():
    out = gpu_check("--prepare-only")
    plan = json.loads(out[out.index("{\n") :])
    runs = plan["train_runs"]
    assert set(runs) == {"gpu fp32", "gpu bf16-mixed", "fsdp2 1 GPU bf16-mixed"}
    for run in runs.values():
        assert run["overrides"][0] == "+experiment=smoke"
        assert run["trainer"]["accelerator"] == "gpu" and run["trainer"]["devices"] == 1
    assert runs["gpu fp32"]["trainer"]["precision"] == "32-true"
    assert runs["gpu bf16-mixed"]["trainer"]["precision"] == "bf16-mixed"
    fsdp2 = runs["fsdp2 1 GPU bf16-mixed"]
    assert fsdp2["trainer"]["strategy"] == "FSDP2Strategy" and fsdp2["trainer"]["precision"] == "bf16-mixed"
    assert "warmstart=none" in fsdp2["overrides"]
    assert plan["rollout_engine"] == "HFGenerateEngine"
    assert 0.45e9 <= plan["llama_05b"]["parameters"] <= 0.55e9  # ~0.5 B, counted on the meta device
    for package in ("hydra", "omegaconf", "datasets", "medcalc", "transformers", "peft", "lightning"):
        assert package in plan["packages"]


@pytest.mark.slow
def test_the_whole_script_runs_at_toy_sizes_on_cpu(tmp_path):
    out = gpu_check(
        "--exercise-on-cpu", "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "res")
    )
    report = (tmp_path / "res" / "gpu.md").read_text()
    results = json.loads((tmp_path / "res" / "gpu.json").read_text())
    assert [r["rc"] for r in results["train"].values()] == [0, 0, 0]
    assert all(r["checkpoint"] for r in results["train"].values())
    assert set(results["rollout"]["decode step"]["ms"]) == {"generate", "fast"}
    assert "| fsdp2 1 GPU bf16-mixed | 0 |" in report and "| fast |" in report
    assert "Rollout speed" in out
    tests = results["gpu_tests"]  # no CUDA here: the gpu cases are collected and skipped
    assert tests["rc"] == 0 and "skipped" in tests["summary"] and "passed" not in tests["summary"], tests
    assert "## Tests marked gpu" in report


def test_the_check_runs_every_file_with_gpu_tests():
    sys.path.insert(0, str(Path(REPO) / "scripts"))
    try:
        from gpu_check import GPU_TEST_FILES
    finally:
        sys.path.pop(0)
    marked = {
        path.relative_to(REPO).as_posix()
        for path in Path(REPO, "tests").rglob("test_*.py")
        if path != Path(__file__) and any(mark in path.read_text() for mark in ("mark.gpu", "on_devices()"))
    }
    assert "tests/grpo/test_grpo_module.py" in marked
    assert sorted(marked) == sorted(GPU_TEST_FILES)
