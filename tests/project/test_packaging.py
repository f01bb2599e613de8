"""Issue 17: a wheel install works from any directory: the Hydra config tree ships inside the package.

Builds the wheel (`pip wheel --no-deps`, no build isolation: offline), installs it into a fresh venv that
sees the running interpreter's site-packages for the dependencies (`pip install --no-deps`; a `.pth` file
names those directories, so this works whether the project was installed into the base interpreter or
into a virtual environment, where `--system-site-packages` would reach only the base interpreter's), and
from a directory outside the repository runs the scoring CLI and
`python -m quark_lightning.cli.train` (the train.py equivalent), checking that the installed copy, not the
source checkout, is what ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quark_lightning.cli.entry import conf_dir
from tests.conftest import REPO

TRAIN = [
    "+experiment=smoke",
    "trainer.max_steps=1",
    "warmstart.steps=1",
    "rollout.max_new_tokens=8",
    "callbacks.closed_loop.report_dir=null",
    "save_policy=false",
    "optimization.normalization.calibration_prompts=4",
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=1",
]


def dependency_dirs() -> list[str]:
    """The site-packages directories the running interpreter imports from (a venv's, the base's)."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


def venv_seeing_our_dependencies(venv: Path, cwd: Path) -> str:
    """A fresh venv whose imports fall back on this interpreter's site-packages; its python.

    A plain path line in a `.pth` file is appended to sys.path without processing the `.pth` files found
    there, so the source checkout's editable install stays invisible and the wheel is what gets imported.
    """
    sh([sys.executable, "-m", "venv", str(venv)], cwd)
    python = str(venv / "bin" / "python")
    site = sh([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd).stdout.strip()
    (Path(site) / "quark_test_dependencies.pth").write_text("\n".join(dependency_dirs()) + "\n")
    return python


def sh(cmd: list[str], cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_source_checkout_finds_the_repository_config_tree():
    assert (conf_dir() / "train.yaml").is_file()
    assert conf_dir().resolve() == (Path(REPO) / "conf").resolve()  # the design card's tree, one copy


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_from_another_directory(tmp_path):
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    sh(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", REPO, "-w", str(wheels)],
        REPO,
    )
    (wheel,) = wheels.glob("quark_lightning-*.whl")
    python = venv_seeing_our_dependencies(venv, tmp_path)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        QUARK_CACHE=str(tmp_path / "cache"),
        PYTHONPATH="",  # a checkout on PYTHONPATH would make pip think the project is installed already
    )
    sh([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp_path, env)

    where = sh(
        [python, "-c", "import quark_lightning.cli.entry as e; print(e.__file__); print(e.conf_dir())"], work, env
    )
    module_file, installed_conf = where.stdout.split()
    assert module_file.startswith(str(venv)) and installed_conf.startswith(str(venv)), where.stdout
    assert (Path(installed_conf) / "experiment" / "smoke.yaml").is_file()

    responses = work / "responses.jsonl"
    row = {
        "id": "w-1",
        "messages": [{"role": "user", "content": "How much water should I drink?"}],
        "response": "About six to eight glasses a day; more in hot weather. See a doctor if you feel dizzy.",
    }
    responses.write_text(json.dumps(row) + "\n")
    # no --config-dir: the scoring CLI finds the installed package's config tree by itself
    scored = sh(
        [python, "-m", "quark_lightning.cli.score", "--input", str(responses), "--matrix", "rules_only"],
        work,
        env,
    )
    (out,) = [json.loads(line) for line in scored.stdout.splitlines()]
    assert out["id"] == "w-1" and out["scores"]["format_rules"] is not None

    trained = sh([python, "-m", "quark_lightning.cli.train", *TRAIN, f"hydra.run.dir={work / 'run'}"], work, env)
    assert (work / "run" / "checkpoints" / "last.ckpt").is_file(), trained.stdout[-2000:]

    bad = subprocess.run(
        [python, "-m", "quark_lightning.cli.train", "+experiment=nope"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "valid experiment names: " in bad.stderr and " demo," in bad.stderr, (
        bad.stderr[-2000:]
    )
