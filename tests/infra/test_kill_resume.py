"""Interrupted runs continue exactly: SIGKILL or SIGTERM mid-run, resume with `ckpt_path=last`.

The end-to-end tests run the real `train.py` (smoke size, deterministic, a checkpoint every step, 8 prompts so
that 6 steps cross an epoch boundary) and require the resumed run's final checkpoint to equal the
uninterrupted run's bit for bit (`torch.equal`, tolerance 0): on CPU with deterministic kernels the resumed
run performs the same operations on bitwise-identical inputs, so any difference is a piece of state the
checkpoint failed to carry (one missed random draw changes the sampled completions and every weight after).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import torch

from callbacks.preemption import PREEMPTED_EXIT_CODE
from quark_lightning.data import BUNDLED_PROMPTS
from quark_lightning.data.datamodule import AreaWeightedSampler
from quark_lightning.data.resumable import ResumableDataLoader, ShuffleSampler
from quark_lightning.infra.checkpointing import AtomicCheckpointIO, resolve_ckpt_path
from quark_lightning.infra.errors import ConfigError
from tests.conftest import REPO

STEPS = 6
FAST = [
    "+experiment=smoke",
    f"trainer.max_steps={STEPS}",
    "trainer.deterministic=true",
    "callbacks.checkpoint.every_n_train_steps=1",
    "callbacks.checkpoint.save_top_k=-1",  # epoch=E-step=S.ckpt per step: what the tests poll for
    "callbacks.closed_loop.report_dir=null",
    "rollout.max_new_tokens=8",
    "optimization.normalization.calibration_prompts=4",
    "warmstart.steps=2",
    "save_policy=false",
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=1",
]


# ------------------------------------------------------------------------------------------- helpers
def small_prompt_file(path) -> str:
    """8 prompts (2 per area, 4 areas): 4 steps of 2 prompts per epoch, so 6 steps cross an epoch end."""
    picked: dict[str, int] = {}
    rows = []
    for line in open(BUNDLED_PROMPTS):
        row = json.loads(line)
        area = row.get("area")
        if row.get("reference") and area in ("cardiology", "respiratory", "mental_health", "pediatrics"):
            if picked.get(area, 0) < 2:
                picked[area] = picked.get(area, 0) + 1
                rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class Runner:
    """Launches `train.py` like a user, sharing one model cache (the tiny model is built once)."""

    def __init__(self, root):
        self.root = root
        self.env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            QUARK_CACHE=str(root / "cache"),
            TOKENIZERS_PARALLELISM="false",
            # the closed loop's diagnosis lists findings of equal share in set order, i.e. hash order
            PYTHONHASHSEED="0",
        )
        self.data = small_prompt_file(root / "prompts.jsonl")

    def command(self, run_dir, *overrides: str) -> list[str]:
        return [
            sys.executable,
            "train.py",
            *FAST,
            f"data.path={self.data}",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]

    def run(self, run_dir, *overrides: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self.command(run_dir, *overrides),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    def signal_after_checkpoint(self, run_dir, step: int, signum: int) -> tuple[int, str]:
        """Start a run, send `signum` as soon as the checkpoint of `step` exists; (exit status, output)."""
        log_path = self.root / f"{run_dir.name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(self.command(run_dir), cwd=REPO, env=self.env, stdout=log, stderr=log)
            try:
                wait_for_file(run_dir / "checkpoints", f"-step={step}.ckpt", proc)
                proc.send_signal(signum)
                proc.wait(timeout=900)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return proc.returncode, log_path.read_text()

    def kill_mid_save(self, run_dir, step: int) -> int:
        """Start a run and SIGKILL it while it is inside the atomic write of last.ckpt at `step`."""
        command = [sys.executable, "-c", HOLD_MID_SAVE + RUN_SCRIPT, *self.command(run_dir)[1:]]
        tmp = run_dir / "checkpoints" / "last.ckpt.tmp"
        with open(self.root / f"{run_dir.name}.log", "w") as log:
            return kill_mid_save(command, tmp, step, self.env, log)


# Prepended to a child process's code: its save of checkpoint `HOLD_SAVE_STEP` into `HOLD_SAVE_TMP` (the
# staging file of AtomicCheckpointIO, `<file>.tmp`) writes half of the new bytes, makes them durable,
# creates `HOLD_SAVE_MARKER`, and holds there: the test's SIGKILL provably lands inside the atomic write,
# after the new bytes started and before the rename. Every other save is the real `torch.save`.
HOLD_MID_SAVE = """
import io, os, threading, torch

_real_save = torch.save
_tmp, _step = os.path.abspath(os.environ["HOLD_SAVE_TMP"]), int(os.environ["HOLD_SAVE_STEP"])

def _save(obj, f, *args, **kwargs):
    name = getattr(f, "name", None)
    if isinstance(name, str) and os.path.abspath(name) == _tmp and obj.get("global_step") == _step:
        staged = io.BytesIO()
        _real_save(obj, staged, *args, **kwargs)
        f.write(staged.getvalue()[: len(staged.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        open(os.environ["HOLD_SAVE_MARKER"], "w").close()
        threading.Event().wait()  # until the SIGKILL
    return _real_save(obj, f, *args, **kwargs)

torch.save = _save
"""
RUN_SCRIPT = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def kill_mid_save(command: list[str], tmp, step: int, env: dict[str, str], log) -> int:
    """Run `command` (python CODE ARGS) with HOLD_MID_SAVE, SIGKILL it while it holds inside its save of
    checkpoint `step` to `tmp`; -> its exit status."""
    marker = f"{tmp}.inside"
    env = {**env, "HOLD_SAVE_TMP": str(tmp), "HOLD_SAVE_STEP": str(step), "HOLD_SAVE_MARKER": marker}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        wait_for_file(tmp.parent, tmp.name + ".inside", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_for_file(directory, suffix: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not (directory.is_dir() and any(p.name.endswith(suffix) for p in directory.iterdir())):
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before writing *{suffix}"
        assert time.monotonic() < deadline, f"no *{suffix} in {directory} after {timeout}s"
        time.sleep(0.05)


def load(path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_equal(a: Any, b: Any, where: str) -> None:
    """Exact equality of nested checkpoint values (tensors bitwise; NaN equals NaN)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b), (
            f"{where}: differs (max abs diff {(a.double() - b.double()).abs().max():.3g})"
        )
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def callback_state(ckpt: dict[str, Any], name: str) -> Any:
    (key,) = [k for k in ckpt["callbacks"] if k.startswith(name)]
    return ckpt["callbacks"][key]


def assert_same_training_state(resumed: dict[str, Any], uninterrupted: dict[str, Any]) -> None:
    """Policy, reference, normalizer statistics, weights + TADW EMA state, optimizer, closed loop, RNG, data."""
    assert resumed["global_step"] == uninterrupted["global_step"] == STEPS
    weights = uninterrupted["state_dict"]
    for prefix in ("policy.", "reference.", "shaping.normalizer.", "shaping.weighting.", "shaping.loop_gain"):
        assert any(k.startswith(prefix) for k in weights), f"no {prefix}* in the checkpoint"
    assert_equal(resumed["state_dict"], weights, "state_dict")
    assert_equal(resumed["optimizer_states"], uninterrupted["optimizer_states"], "optimizer_states")
    assert_equal(resumed["lr_schedulers"], uninterrupted["lr_schedulers"], "lr_schedulers")
    for name in ("ClosedLoopSupervision", "RewardTrend", "RNGStateCallback"):
        assert_equal(callback_state(resumed, name), callback_state(uninterrupted, name), name)
    position = [c["loops"]["fit_loop"]["state_dict"]["combined_loader"] for c in (resumed, uninterrupted)]
    assert_equal(position[0], position[1], "data position")


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("kill_resume"))


@pytest.fixture(scope="module")
def uninterrupted(runner) -> dict[str, Any]:
    run_dir = runner.root / "uninterrupted"
    runner.run(run_dir)
    return load(run_dir / "checkpoints" / "last.ckpt")


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_sigkill_while_last_ckpt_is_written_then_resume_equals_the_uninterrupted_run(runner, uninterrupted):
    """SIGKILL inside the atomic write of step 2's last.ckpt (half its bytes in last.ckpt.tmp): step 1's
    last.ckpt is intact, and resuming from it ends where the uninterrupted run ends, bit for bit."""
    run_dir = runner.root / "killed"
    assert runner.kill_mid_save(run_dir, step=2) == -signal.SIGKILL
    last = run_dir / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] == 1  # the previous checkpoint, complete
    with pytest.raises(RuntimeError, match="failed finding central directory"):  # the new one, half written
        load(last.with_name("last.ckpt.tmp"))

    proc = runner.run(run_dir, "ckpt_path=last")  # same command, same hydra.run.dir
    assert f"Resuming from {last}" in proc.stdout
    assert "RFN: using the frozen statistics restored from the checkpoint" in proc.stdout
    assert not last.with_name("last.ckpt.tmp").exists()  # the next save of last.ckpt reused it
    assert_same_training_state(load(last), uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_at_the_step_boundary_and_exits_cleanly_then_resumes_exactly(runner, uninterrupted):
    run_dir = runner.root / "preempted"
    status, output = runner.signal_after_checkpoint(run_dir, step=3, signum=signal.SIGTERM)
    assert status == PREEMPTED_EXIT_CODE, output[-3000:]
    assert "Traceback" not in output
    last = run_dir / "checkpoints" / "last.ckpt"
    stopped_at = load(last)["global_step"]
    assert stopped_at in (3, 4)  # the step in progress when the signal came (or the one just finished)
    assert f"Preempted (SIGTERM) at step {stopped_at}: saved {last}" in output
    assert not list((run_dir / "checkpoints").glob(f"*-step={stopped_at + 1}.ckpt"))  # it stopped there
    assert not (run_dir / "summary.json").exists()  # end-of-training work is left to the resumed run

    proc = runner.run(run_dir, "ckpt_path=last")
    assert f"Resuming from {last}" in proc.stdout
    assert_same_training_state(load(last), uninterrupted)


# ------------------------------------------------------------------------------------------- atomic writes
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, path)
    real_save = torch.save

    def crash_midway(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        fh.truncate(fh.tell() // 2)  # half the bytes are on disk, then the writer dies
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="simulated"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    kept = load(path)
    assert kept["global_step"] == 1 and torch.equal(kept["w"], torch.ones(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


WRITER = """
import sys, torch
from quark_lightning.infra.checkpointing import AtomicCheckpointIO
for step in (1, 2):  # HOLD_MID_SAVE holds the second save halfway
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "w": torch.full((1000,), float(step))}, sys.argv[1])
"""


def test_sigkill_inside_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    tmp = tmp_path / "last.ckpt.tmp"
    with open(tmp_path / "writer.log", "w") as log:
        status = kill_mid_save(
            [sys.executable, "-c", HOLD_MID_SAVE + WRITER, str(path)], tmp, 2, {**os.environ}, log
        )
    assert status == -signal.SIGKILL
    kept = load(path)  # the previous save, complete
    assert kept["global_step"] == 1 and torch.equal(kept["w"], torch.full((1000,), 1.0))
    assert 0 < tmp.stat().st_size < path.stat().st_size  # the kill landed with half of save 2 written
    with pytest.raises(RuntimeError, match="failed finding central directory"):  # a truncated zip
        load(tmp)
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "w": torch.zeros(1000)}, path)  # the next save
    assert load(path)["global_step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.tmp.inside", "writer.log"]


# ------------------------------------------------------------------------------------------- ckpt_path=last
def test_ckpt_path_last_resolves_in_the_run_dir_and_says_how_to_fix_a_missing_one(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"ckpt_path=last: there is no checkpoint at .*hydra\.run\.dir="):
        resolve_ckpt_path("last", str(run_dir))
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    expected = str(run_dir / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path("last", str(run_dir)) == expected
    assert resolve_ckpt_path(str(run_dir), "/elsewhere") == expected  # a run dir means its last.ckpt
    assert resolve_ckpt_path("/some/file.ckpt", str(run_dir)) == "/some/file.ckpt"
    assert resolve_ckpt_path(None, str(run_dir)) is None


# ------------------------------------------------------------------------------------------- data position
AREAS = ["a", "a", "a", "b", "b", "c", "c", "d", "d"]  # 9 prompts, batches of 2: 4 per pass, 1 left over


def curriculum(step: int) -> dict[str, float]:
    """Area weights that change after every batch, as the closed loop may change them."""
    return {a: 1.0 + ((step * (i + 3)) % 5) for i, a in enumerate("abcd")}


def make_loader(kind: str, workers: int) -> ResumableDataLoader:
    torch.manual_seed(0)  # the shuffle sampler and the loader seed themselves from the global RNG
    sampler = AreaWeightedSampler(AREAS, seed=0) if kind == "curriculum" else ShuffleSampler(AREAS)
    return ResumableDataLoader(
        list(range(len(AREAS))), batch_size=2, sampler=sampler, drop_last=True, num_workers=workers
    )


def take(loader: ResumableDataLoader, start: int, stop: int, states: dict | None = None) -> list[list[int]]:
    """Batches number start+1 .. stop, a new iterator per pass, like Lightning's fit loop."""
    batches: list[list[int]] = []
    step = start
    while step < stop:
        for batch in loader:
            step += 1
            batches.append(batch.tolist())
            if isinstance(loader.sampler, AreaWeightedSampler):
                loader.sampler.set_area_weights(curriculum(step))
            if states is not None:
                states[step] = loader.state_dict()  # a checkpoint at the end of this step
            if step == stop:
                break
    return batches


@pytest.mark.parametrize("workers", [0, 1])  # a worker prefetches: drawn but unconsumed indices
@pytest.mark.parametrize("kind", ["curriculum", "shuffle"])
def test_loader_resumed_at_any_step_yields_the_batches_of_the_uninterrupted_loader(kind, workers):
    total = 11  # almost three passes
    states: dict[int, dict] = {}
    reference = take(make_loader(kind, workers), 0, total, states)
    assert len({tuple(b) for b in reference}) > 4  # the data really move
    for cut in range(1, total):
        resumed = make_loader(kind, workers)
        torch.manual_seed(123)  # whatever the resumed process's global RNG holds
        if isinstance(resumed.sampler, AreaWeightedSampler):
            resumed.sampler.set_area_weights(curriculum(cut))  # the closed loop restores its weights
        resumed.load_state_dict(states[cut])
        assert take(resumed, cut, total) == reference[cut:], f"resumed after step {cut}"
        assert_equal(resumed.state_dict(), states[total], f"state after resuming at step {cut}")
