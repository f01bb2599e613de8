"""`--multirun` sweeps: every job in its own directory, one comparison table, a failing job recorded.

The fast tests drive quark_lightning.cli.sweep on job directories written by hand; the slow one runs a real
3-job sweep through train.py, where the middle job has a bad `algorithm.loss_type`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quark_lightning.cli.sweep import run_sweep_job, write_comparison
from quark_lightning.infra.errors import ConfigError
from tests.conftest import REPO


def make_job(sweep, num, overrides, record=None, reward=None, heldout=None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if record is not None:
        (job / "job.json").write_text(json.dumps({"overrides": overrides, **record}))
    if reward is not None:
        metrics = {
            "reward": {"start": 0.0, "end": reward},
            "rewards/safety/mean": {"start": 0.5, "end": 0.75},
        }
        (job / "summary.json").write_text(json.dumps({"metrics": metrics}))
    if heldout is not None:
        (job / "eval" / "step_00003").mkdir(parents=True)
        history = [{"step": 3, "dimensions": {"safety": {"count": 4, "pass_rate": heldout, "mean": heldout}},
                    "categories": {"fundamental": {"pass_rate": heldout}}}]  # fmt: skip
        (job / "eval" / "step_00003" / "metrics.json").write_text(json.dumps({"history": history}))
    return job


def test_the_table_has_each_jobs_final_and_held_out_metrics_and_why_one_failed(tmp_path):
    make_job(tmp_path, 0, ["seed=0", "optimization=sum"], {"status": "ok"}, reward=0.5, heldout=0.25)
    error = {"status": "failed", "error_type": "ConfigError", "error": "algorithm.loss_type: got 'ppo'"}
    make_job(tmp_path, 1, ["seed=0", "optimization=gdpo"], error)
    make_job(tmp_path, 10, ["seed=0", "optimization=rfn"])  # killed: no job.json
    md_path, rows = write_comparison(str(tmp_path))

    assert [r["job"] for r in rows] == ["0", "1", "10"]  # numeric order, not 0, 1, 10 as strings sort
    assert [r["status"] for r in rows] == ["ok", "failed", "no record"]
    assert rows[0]["metrics"] == {
        "reward": 0.5,
        "rewards/safety/mean": 0.75,
        "heldout/step": 3,
        "heldout/safety/pass_rate": 0.25,
        "heldout/safety/mean": 0.25,
        "heldout/category/fundamental/pass_rate": 0.25,
    }
    assert rows[1]["error"] == "ConfigError: algorithm.loss_type: got 'ppo'"
    text = open(md_path).read()
    assert "3 jobs, 1 ok, 2 not" in text and "Every job: `seed=0`" in text
    assert "| 1 | optimization=gdpo | failed | – |" in text and "got 'ppo'" in text
    assert "| 0 | optimization=sum | ok | 0.5000 | 0.7500 | 3 | 0.2500 |" in text
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["jobs"] == rows and saved["columns"][0] == "reward"


def test_a_sweep_job_records_its_error_and_returns(tmp_path):
    cfg = {"run_dir": str(tmp_path / "job")}

    def bad(_cfg):
        raise ConfigError("algorithm.loss_type: got 'ppo'. Fix: pass algorithm.loss_type=grpo")

    def crash(_cfg):
        raise RuntimeError("boom")

    assert run_sweep_job(bad, cfg) is None  # no SystemExit: the next job runs
    record = json.loads((tmp_path / "job" / "job.json").read_text())
    assert record["status"] == "failed" and record["error_type"] == "ConfigError"
    assert "traceback" not in record  # a user error's message is the whole story
    assert run_sweep_job(crash, cfg) is None
    record = json.loads((tmp_path / "job" / "job.json").read_text())
    assert record["error"] == "boom" and "RuntimeError: boom" in record["traceback"]
    assert run_sweep_job(lambda _cfg: {"run_dir": "x"}, cfg) == {"run_dir": "x"}
    assert json.loads((tmp_path / "job" / "job.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_a_multirun_with_a_bad_value_runs_the_others_and_writes_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp_path / "cache"))
    cmd = [
        sys.executable, "train.py", "--multirun", "+experiment=smoke", "algorithm.loss_type=grpo,ppo,dr_grpo",
        "trainer.max_steps=1", "warmstart.steps=2", "callbacks.closed_loop.num_prompts=2",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # a job failed: status 1
    assert "1 of 3 jobs did not finish" in proc.stderr

    table = json.loads((sweep / "comparison.json").read_text())
    rows = {r["overrides"].split("algorithm.loss_type=")[1].split()[0]: r for r in table["jobs"]}
    assert {k: r["status"] for k, r in rows.items()} == {"grpo": "ok", "ppo": "failed", "dr_grpo": "ok"}
    assert "algorithm.loss_type: got 'ppo'" in rows["ppo"]["error"]
    for name in ("grpo", "dr_grpo"):  # the job after the failed one ran too, each in its own directory
        job = sweep / rows[name]["job"]
        assert (job / "checkpoints" / "last.ckpt").exists()
        assert {"reward", "rewards/safety/mean", "heldout/safety/pass_rate"} <= set(rows[name]["metrics"])
    md = (sweep / "comparison.md").read_text()
    assert "3 jobs, 2 ok, 1 not" in md and "got 'ppo'" in md
