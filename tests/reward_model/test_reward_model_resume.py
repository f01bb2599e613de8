"""Issue 17: the reward-model stage survives a kill. SIGKILL during `train.py +experiment=rm_orm`, then the
same command again: it resumes from `<run_dir>/checkpoints/last.ckpt` (written atomically) and saves the
same reward model, tensor for tensor (`torch.equal`), as an uninterrupted run; the loader's position in
the epoch, the optimizer, the schedule and the random streams are all in the checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from quark_lightning.data.resumable import ResumableDataLoader
from tests.conftest import REPO

STEPS = 12
ARGS = [
    "+experiment=rm_orm",
    f"reward_model.steps={STEPS}",
    "reward_model.checkpoint_every=1",
    "reward_model.batch_size=4",
    "reward_model.max_length=64",
    "reward_model.warmup_steps=2",
    "trainer.deterministic=true",
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=1",
]


def command(run_dir) -> list[str]:
    return [sys.executable, "train.py", *ARGS, f"hydra.run.dir={run_dir}"]


def env(root) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(root / "cache"), OMP_NUM_THREADS="1")


def run(root, run_dir) -> str:
    proc = subprocess.run(
        command(run_dir), cwd=REPO, env=env(root), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def weights(run_dir) -> dict[str, torch.Tensor]:
    out = {}
    for name in sorted(os.listdir(run_dir / "reward_model")):
        if name.endswith(".safetensors"):
            out.update({f"{name}/{k}": v for k, v in load_file(str(run_dir / "reward_model" / name)).items()})
    assert out, f"no weights in {run_dir / 'reward_model'}"
    return out


def checkpoint_step(path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


def kill_after_step(root, run_dir, step: int) -> int:
    """Start the run, SIGKILL it once last.ckpt holds at least `step` steps; -> global step of last.ckpt."""
    last = run_dir / "checkpoints" / "last.ckpt"
    with open(root / "killed.log", "w") as log:
        proc = subprocess.Popen(command(run_dir), cwd=REPO, env=env(root), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 900
            while not (last.exists() and checkpoint_step(last) >= step):
                assert proc.poll() is None, (root / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return checkpoint_step(last)


def test_the_training_loader_is_resumable():
    from quark_lightning.reward_model.pair_datasets import PairDataset

    dataset = PairDataset.__new__(PairDataset)
    dataset.items, dataset.pad_id = [([1], [2], 1)] * 10, 0
    assert isinstance(dataset.loader(4, shuffle=True, seed=0), ResumableDataLoader)


@pytest.mark.slow
def test_sigkill_during_reward_model_training_then_rerun_gives_the_same_reward_model(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run(tmp_path, uninterrupted)
    killed = tmp_path / "killed"
    at = kill_after_step(tmp_path, killed, step=4)
    assert 4 <= at < STEPS and not (killed / "reward_model").exists()
    out = run(tmp_path, killed)
    assert f"Reward model: resuming from {killed / 'checkpoints' / 'last.ckpt'}" in out
    a, b = weights(uninterrupted), weights(killed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different
