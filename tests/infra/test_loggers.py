"""The `logger` group: several loggers at once, each run named by its stage, each tested offline.

Fast tests compose the real config tree and drive the loggers directly; the slow one runs the smoke
experiment through train.py with `logger=[tensorboard,csv,wandb,mlflow]` (W&B in offline mode, MLflow on
its default SQLite store in the run directory) and reads back what each wrote, the per-dimension metrics
`rewards/<dim>/mean` included.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import struct
import subprocess
import sys
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.loggers import build_loggers, log_scalars, log_text, logger_configs, stage_kwargs
from tests.conftest import REPO

# the dimensions of the smoke experiment's matrix (demo) that apply to every answer
DIMS = ("format_rules", "expert_rubric", "safety")


def train_config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"run_dir={tmp_path}", *overrides])


def test_the_default_is_tensorboard_and_a_list_selects_several(tmp_path):
    assert list(logger_configs(train_config(tmp_path))) == ["tensorboard"]
    both = logger_configs(train_config(tmp_path, "logger=[tensorboard,wandb,mlflow,csv]"))
    assert list(both) == ["tensorboard", "wandb", "mlflow", "csv"]
    assert logger_configs(train_config(tmp_path, "~logger")) == {}
    dropped = logger_configs(train_config(tmp_path, "logger=[tensorboard,csv]", "logger.csv=null"))
    assert list(dropped) == ["tensorboard"]


def test_a_logger_entry_without_target_names_the_key(tmp_path):
    cfg = train_config(tmp_path, "+logger.mine.save_dir=x")
    with pytest.raises(ConfigError, match=r"logger\.mine: expected a logger config with a _target_"):
        logger_configs(cfg)


def test_each_logger_names_its_run_by_the_stage_with_the_argument_it_takes(tmp_path):
    group = logger_configs(train_config(tmp_path, "logger=[tensorboard,wandb,mlflow,csv]"))
    assert stage_kwargs(group["tensorboard"], "grpo") == {"version": "grpo"}
    assert stage_kwargs(group["csv"], "grpo") == {"version": "grpo"}
    # MLFlowLogger has no `version` (the old `instantiate(cfg.logger, version=...)` was a TypeError)
    assert stage_kwargs(group["mlflow"], "grpo") == {"run_name": "grpo"}
    # W&B's `version` is the run id: a fixed one would resume one W&B run in every training run
    assert stage_kwargs(group["wandb"], "warmstart") == {"name": "warmstart", "job_type": "warmstart"}
    named = logger_configs(train_config(tmp_path, "logger=[tensorboard]", "+logger.tensorboard.version=mine"))
    assert stage_kwargs(named["tensorboard"], "grpo") == {}  # the user's own value wins


def test_mlflow_file_store_and_csv_get_scalars_text_and_tables(tmp_path, monkeypatch):
    """MLflow's file store (`file:<run_dir>/mlruns`, which MLflow 3 allows with MLFLOW_ALLOW_FILE_STORE)."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg = train_config(tmp_path, "logger=[mlflow,csv]", f"logger.mlflow.tracking_uri=file:{tmp_path}/mlruns")
    loggers = build_loggers(cfg, "grpo")
    trainer = SimpleNamespace(is_global_zero=True, loggers=loggers)
    log_scalars(trainer, {"rewards/safety/mean": 0.25}, step=1)
    log_scalars(trainer, {"rewards/safety/mean": 0.75}, step=2)
    log_text(trainer, "samples", "**p1**: answer", 2, table=(["id", "completion"], [["p1", "answer"]]))
    for logger in loggers:
        logger.finalize("success")

    mlflow_logger = loggers[0]
    run_dir = glob.glob(str(tmp_path / "mlruns" / "*" / mlflow_logger.run_id))[0]
    lines = open(os.path.join(run_dir, "metrics", "rewards", "safety", "mean")).read().split("\n")
    assert [line.split()[1:] for line in lines if line] == [["0.25", "1"], ["0.75", "2"]]  # value, step
    assert open(os.path.join(run_dir, "tags", "mlflow.runName")).read() == "grpo"
    # artifacts: under the config's artifact_location, <run_dir>/mlartifacts/<run id>/artifacts
    artifacts = tmp_path / "mlartifacts" / mlflow_logger.run_id / "artifacts" / "samples"
    assert open(os.path.join(artifacts, "step_000002.md")).read() == "**p1**: answer"
    assert json.load(open(os.path.join(artifacts, "step_000002.json")))["data"] == [["p1", "answer"]]
    rows = list(csv.DictReader(open(tmp_path / "csv" / "grpo" / "metrics.csv")))
    assert [float(r["rewards/safety/mean"]) for r in rows] == [0.25, 0.75]


def test_a_missing_logger_package_names_the_extra(tmp_path, monkeypatch):
    import lightning.pytorch.loggers.wandb as wandb_module

    monkeypatch.setattr(wandb_module, "_WANDB_AVAILABLE", False)
    cfg = train_config(tmp_path, "logger=[wandb]")
    with pytest.raises(ConfigError, match=r'logger\.wandb: .*pip install -e "\.\[loggers\]"'):
        build_loggers(cfg, "grpo")


# ----------------------------------------------------------------------------------------- end to end
def wandb_records(path: str):
    """The protobuf records of a W&B offline `.wandb` file (LevelDB log format: 32 KiB blocks, 7-byte
    record headers `crc32 | length u16 | type u8`, types full=1 / first=2 / middle=3 / last=4, after a
    7-byte file header `:W&B` + magic + version). wandb >= 0.2x ships no Python reader."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def wandb_history(run_dir: str) -> dict[str, list[float]]:
    path = glob.glob(os.path.join(run_dir, "run-*.wandb"))[0]
    history: dict[str, list[float]] = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    return history


@pytest.fixture(scope="module")
def four_logger_run(tmp_path_factory):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("loggers")
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(tmp / "cache"), WANDB_MODE="offline")
    cmd = [
        sys.executable, "train.py", "+experiment=smoke", f"hydra.run.dir={tmp / 'run'}",
        "logger=[tensorboard,csv,wandb,mlflow]", "trainer.max_steps=2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "run", proc


@pytest.mark.slow
def test_wandb_offline_writes_each_stage_with_the_per_dimension_metrics(four_logger_run):
    run_dir, proc = four_logger_run
    runs = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*")))
    assert len(runs) == 2  # warmstart, then grpo: one W&B run per stage, not one mixed run
    grpo = wandb_history(runs[1])
    for dim in DIMS:
        assert len(grpo[f"rewards/{dim}/mean"]) == 2
    assert grpo["eval/safety/pass_rate"]  # the closed loop's held-out scalars, at the start and the end
    tables = glob.glob(os.path.join(runs[1], "files", "media", "table", "samples_*.table.json"))
    table = json.load(open(tables[0]))
    assert table["columns"][:3] == ["id", "question", "completion"] and set(DIMS) <= set(table["columns"])
    assert f"wandb_dir        {runs[1]}" in proc.stdout


@pytest.mark.slow
def test_mlflow_writes_a_run_per_stage_with_the_per_dimension_metrics(four_logger_run):
    from mlflow.tracking import MlflowClient

    run_dir, _ = four_logger_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("quark-lightning")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"warmstart", "grpo"}
    grpo = runs["grpo"].info.run_id
    for dim in DIMS:
        history = client.get_metric_history(grpo, f"rewards/{dim}/mean")
        assert [m.step for m in history] == [0, 1]  # two optimizer steps (logged before the step counts)
    assert [m.step for m in client.get_metric_history(grpo, "eval/safety/pass_rate")] == [0, 2]  # held out
    artifacts = {a.path for a in client.list_artifacts(grpo, "samples")}
    assert {"samples/step_000001.md", "samples/step_000001.json"} <= artifacts


@pytest.mark.slow
def test_csv_and_tensorboard_alongside(four_logger_run):
    run_dir, _ = four_logger_run
    rows = list(csv.DictReader(open(run_dir / "csv" / "grpo" / "metrics.csv")))
    assert all(f"rewards/{dim}/mean" in rows[0] for dim in DIMS)
    assert glob.glob(str(run_dir / "tensorboard" / "grpo" / "events.out.tfevents.*"))
