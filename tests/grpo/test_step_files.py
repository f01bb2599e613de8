"""The README's "One RL step" table lists every library file one GRPO step enters: measured, not claimed.

One run through the real config path (`+experiment=smoke`, `optimization=rfn_tadw`, a 1-layer tiny model,
two steps), as train.py runs it. A profile hook records every function call in the repository while the
second step's `training_step` runs (the first one also calibrates). The files it entered must be the
files the README's table links, apart from:

    grpo/grpo_module.py              the step itself (named above the table)
    scorers/                         the matrix's scorers, one per dimension (the table says so)
    OPTIONAL                         files only some settings enter (`rollout=vllm`, redraws, DAPO refill)
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import lightning as L
import pytest

REPO = Path(__file__).resolve().parents[2]
OPTIONAL = {"quark_lightning/rollout/vllm_engine.py", "quark_lightning/grpo/dynamic_sampling.py"}
NOT_IN_TABLE = ("quark_lightning/grpo/grpo_module.py", "quark_lightning/scorers/")
OVERRIDES = [
    "+experiment=smoke",
    "~logger",
    "warmstart=none",
    "trainer.max_steps=2",
    "optimization=rfn_tadw",
    "optimization.normalization.calibration_prompts=4",
    "callbacks.closed_loop=null",
    "callbacks.samples=null",
    "callbacks.preemption=null",
    "callbacks.reward_trend=null",
    "save_policy=false",
    "rollout.max_new_tokens=16",
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=1",
]


class StepTracer(L.Callback):
    """Records the repository files whose functions run inside the module's `training_step` of step 2."""

    def __init__(self):
        self.files: set[str] = set()

    def _profile(self, frame, event, arg):
        if event == "call":
            path = frame.f_code.co_filename
            if path.startswith(str(REPO) + os.sep):
                self.files.add(os.path.relpath(path, REPO))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1:
            step = pl_module.training_step

            def traced(*args, **kwargs):
                sys.setprofile(self._profile)
                threading.setprofile(self._profile)  # the matrix runs each scorer in a thread (matrix/alignment_matrix.py)
                try:
                    return step(*args, **kwargs)
                finally:
                    sys.setprofile(None)
                    threading.setprofile(None)

            pl_module.training_step = traced

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.__dict__.pop("training_step", None)  # back to the class's method


def table_files() -> set[str]:
    """Every repository path linked from the rows of the README's "One RL step" table."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## One RL step\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "](" in line]
    return {target for row in rows for target in re.findall(r"\]\(([^)#]+)\)", row)}


@pytest.mark.slow
def test_the_readme_step_table_lists_every_file_one_step_enters(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    import quark_lightning.cli.run as run_mod

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", [*OVERRIDES, f"run_dir={tmp_path}", f"model.cache_dir={tmp_path / 'cache'}"])
    tracer = StepTracer()
    original = run_mod.build_callbacks
    monkeypatch.setattr(run_mod, "build_callbacks", lambda cfg: [*original(cfg), tracer])
    run_mod.run(cfg)

    entered = {f for f in tracer.files if f.startswith("quark_lightning/") and not f.startswith(NOT_IN_TABLE)}
    assert any(f.startswith("quark_lightning/scorers/") for f in tracer.files)  # the profile saw the scoring
    listed = table_files()
    assert not entered - listed, f"the step enters files the README's table does not list: {sorted(entered - listed)}"
    stale = listed - entered - OPTIONAL
    assert not stale, f"the README's table lists files the step never enters: {sorted(stale)}"


def test_the_table_parser_sees_the_links():
    listed = table_files()
    assert "quark_lightning/shaping/reward_shaping.py" in listed and OPTIONAL <= listed
