"""Checkpoints that survive a kill: atomic writes, `ckpt_path=last`, and every random stream.

- `AtomicCheckpointIO` (a Lightning CheckpointIO plugin): a checkpoint is written to `<file>.tmp` in the
  same directory, flushed and fsynced, then renamed over `<file>` with `os.replace` (atomic on POSIX), and
  the directory is fsynced. A process killed at any moment of a save (SIGKILL included) leaves either the
  previous complete file or the new complete file, never a truncated one. Lightning's own writer is not
  enough: it stages the bytes in a temporary file of the system temp dir and *moves* it, which is a copy
  (not atomic) whenever that dir is on another file system than the run dir, and it never fsyncs.
- `resolve_ckpt_path`: `ckpt_path=last` means `<run_dir>/checkpoints/last.ckpt`; since Hydra makes a new
  run dir per launch, a resume reruns the same command with the interrupted run's
  `hydra.run.dir=...`. A run directory given as `ckpt_path` means its `checkpoints/last.ckpt` too.
- `capture_rng_state` / `restore_rng_state`: torch (CPU and every CUDA device), Python `random` and NumPy
  global generators, as tensors and plain Python values (a checkpoint stays loadable with
  `torch.load(..., weights_only=True)`). Lightning saves none of them; `callbacks/rng_state.py` puts them
  in every checkpoint.
- `check_checkpoint`: a checkpoint to resume from is read before `trainer.fit(..., ckpt_path=...)` the way
  Lightning will read it (`torch.load` on CPU, tensors only; memory-mapped, so the tensor bytes are not
  read): an empty, truncated or random file, or a torch file that is not a Lightning training checkpoint
  (a bare state dict, a weights-only save), stops the run with a CheckpointError (exit 2) that names the
  file and the fix, instead of a traceback from deep inside Lightning.
"""

from __future__ import annotations

import glob
import os
import random
import zipfile
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from quark_lightning.infra.errors import ConfigError, QuarkError

LAST_CHECKPOINT = os.path.join("checkpoints", "last.ckpt")  # relative to the run dir


# ---------------------------------------------------------------------------------------- atomic writes
def fsync_directory(directory: str) -> None:
    """Make a rename inside `directory` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str) -> None:
    """`torch.save(obj, path)` such that `path` is, at every instant, absent, the old file or the new file.

    The bytes go to `<path>.tmp` (same directory, so the rename never crosses file systems), are fsynced,
    and replace `path` with `os.replace`. On any error the temporary file is removed and the error raised;
    a stale `<path>.tmp` left by a SIGKILL is simply overwritten by the next save.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_directory(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO whose saves are atomic on local file systems (see `atomic_torch_save`).

    Remote paths (`s3://...`, any fsspec URL) keep Lightning's own writer, whose object-store uploads are
    already all-or-nothing. Loading and removal are Lightning's.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, os.fspath(path))


# ---------------------------------------------------------------------------------------- ckpt_path=last
def last_checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, LAST_CHECKPOINT)


def _newest_checkpoint_near(run_dir: str) -> str | None:
    """The newest `last.ckpt` of a sibling run in Hydra's default `outputs/DATE/TIME` layout, as a hint."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(run_dir)))
    if os.path.basename(root) != "outputs":
        return None
    found = glob.glob(os.path.join(root, "*", "*", LAST_CHECKPOINT))
    return max(found, key=os.path.getmtime) if found else None


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str) -> str | None:
    """`last` -> `<run_dir>/checkpoints/last.ckpt`; a run directory -> its `checkpoints/last.ckpt`.

    Any other value is returned unchanged (the config validation checks that it is a file). Raises
    ConfigError when `last` (or a run directory) has no checkpoint, saying where it looked and what to pass.
    """
    if ckpt_path is None:
        return None
    value = os.path.expanduser(str(ckpt_path))
    if value == "last":
        candidate = last_checkpoint_path(run_dir)
        if os.path.isfile(candidate):
            return candidate
        newest = _newest_checkpoint_near(run_dir)
        hint = f" The newest checkpoint of a nearby run is {newest}." if newest else ""
        raise ConfigError(
            f"ckpt_path=last: there is no checkpoint at {candidate} (this launch's run dir is {run_dir}; Hydra "
            "makes a new one per launch unless told otherwise)." + hint + " Fix: rerun the interrupted "
            "command with its own run dir, e.g. `python train.py ... hydra.run.dir=<interrupted run dir> "
            "ckpt_path=last`, or pass ckpt_path=<path/to/file.ckpt>."
        )
    if os.path.isdir(value):
        candidate = last_checkpoint_path(value)
        if os.path.isfile(candidate):
            return candidate
        raise ConfigError(
            f"ckpt_path: {ckpt_path!r} is a directory without {LAST_CHECKPOINT}. "
            "Fix: pass a run dir that has saved a checkpoint, or a .ckpt file."
        )
    return str(ckpt_path)


# ---------------------------------------------------------------------------------------- damaged checkpoints
# What Lightning's fit needs of a checkpoint to resume training (a weights-only save has no optimizer_states).
RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "global_step", "epoch", "pytorch-lightning_version")
RESUME_FIX = (
    "Fix: pass another checkpoint of the run (an earlier <run_dir>/checkpoints/*.ckpt, or the last.ckpt of "
    "the interrupted run), or set ckpt_path=null to start afresh."
)
AUTO_RESUME_FIX = (  # a stage that resumes from its run dir's checkpoints/last.ckpt by itself
    "Fix: delete that file (the stage then trains from its start; other checkpoints in the same folder can "
    "be renamed to last.ckpt to resume from them instead), or run in a new run dir."
)


class CheckpointError(QuarkError, RuntimeError):
    """A checkpoint to resume from is damaged or is not a Lightning training checkpoint."""


def check_checkpoint(path: str | None, setting: str | None = "ckpt_path", fix: str | None = None) -> None:
    """Refuse a checkpoint `trainer.fit(ckpt_path=path)` could not resume from; None: nothing to check.

    Reads it as Lightning does (`torch.load` on CPU, tensors only) but memory-mapped, so only the zip
    directory, each member's header and the small pickle are read, not the tensor bytes (a flipped bit
    inside a tensor goes unnoticed, as it does in Lightning's own load), and checks the keys a resumed
    fit needs (RESUME_KEYS). A remote path (`s3://...`) and a directory (a distributed checkpoint,
    `save_distributed_checkpoint=True`) are left to Lightning. `setting` names the config
    key the path came from (None: a checkpoint the stage found in its run dir by itself); `fix` is the
    sentence that says what to do instead (default: RESUME_FIX for a configured path, AUTO_RESUME_FIX for
    a found one).
    """
    if path is None or "://" in str(path) or os.path.isdir(path):  # a remote or distributed checkpoint
        return
    fix = fix or (RESUME_FIX if setting else AUTO_RESUME_FIX)
    path = os.fspath(path)
    where = f"{setting}: {path!r}" if setting else f"the checkpoint {path!r}"
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise CheckpointError(f"{where} cannot be read ({err.strerror}). {fix}") from err
    if size == 0:
        raise CheckpointError(f"{where} is empty (0 bytes): it was never written completely. {fix}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the very end
        raise CheckpointError(
            f"{where} is damaged: truncated, or not a checkpoint at all ({size:,} bytes, not the zip archive "
            f"torch.save writes). {fix}"
        )
    try:
        with zipfile.ZipFile(path) as archive:  # every member's header where the directory says it is
            for member in archive.infolist():
                archive.open(member).close()
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - whatever zipfile or torch says, it cannot be resumed from
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{where} is damaged or not loadable as tensors only ({type(err).__name__}: {reason[:300]}). {fix}"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{where} is not a Lightning checkpoint: it holds a {type(checkpoint).__name__}, not a dict. {fix}"
        )
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        kind = (
            "a save_weights_only checkpoint?"
            if "state_dict" in checkpoint
            else "a torch file of something else, e.g. a bare state dict?"
        )
        raise CheckpointError(
            f"{where} is not a Lightning training checkpoint to resume from: it has no "
            f"{', '.join(missing)} ({kind}). {fix}"
        )
    del checkpoint  # the mapped file is released


# ---------------------------------------------------------------------------------------- random streams
def capture_rng_state() -> dict[str, Any]:
    """Every global random stream of this process, as tensors and plain Python values."""
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set every global random stream to `state` (from `capture_rng_state`).

    CUDA streams are restored when this process has the same number of devices as the one that saved them;
    otherwise they are left as they are.
    """
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["key"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuples(value: Any) -> Any:
    """`random.setstate` needs tuples; a checkpoint round trip may have turned them into lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value
