"""SIGTERM (preemption) -> checkpoint at the next step boundary -> clean exit with status 143.

Schedulers announce a preemption with SIGTERM and kill the process a grace period later. Lightning alone
only sets a flag on a plain SIGTERM and later raises an exception that ends the run with status 0 and no
checkpoint of the steps since the last periodic save. This callback takes over SIGTERM while training runs:
the handler only sets a flag; at the end of the step in progress (after every other callback has updated
its state, as for a periodic checkpoint) it writes `<dirpath>/<filename>.ckpt`, prints

    Preempted (SIGTERM) at step N: saved <path>. Resume: rerun the same command with ckpt_path=<path> ...

to stderr and exits with status 143 (128 + SIGTERM, what shells report for a SIGTERM-terminated process,
so a wrapper can tell "preempted, resume me" from "finished" (0) and "failed" (1, 2)). Nothing of the
end-of-training work runs (final evaluation, summary, policy export): the resumed run does it.

The flag is all-reduced every step, so with DDP every rank stops at the same step and joins the
collective save. The previous SIGTERM handler is put back when training ends. A SIGTERM before training
starts (model loading, warm start) is not intercepted: there is no RL state to save yet.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from quark_lightning.infra.distributed import all_reduce_max_int

PREEMPTED_EXIT_CODE = 128 + int(signal.SIGTERM)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exits with PREEMPTED_EXIT_CODE, no traceback."""


class PreemptionCheckpoint(Checkpoint):
    """A `Checkpoint` so that Lightning runs it after the other callbacks' batch-end hooks."""

    def __init__(self, dirpath: str, filename: str = "last", exit_code: int = PREEMPTED_EXIT_CODE):
        self.dirpath = dirpath
        self.filename = filename
        self.exit_code = exit_code
        self.requested = False
        self._previous_handler: Any = None

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, f"{self.filename}.ckpt")

    # ------------------------------------------------------------------ the signal
    def _on_sigterm(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _uninstall(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_handler)
        self._previous_handler = None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested = False
        self._install()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        local = self.requested or trainer.received_sigterm  # the latter: a SIGTERM before on_train_start
        if not all_reduce_max_int(int(local), pl_module.device):
            return
        trainer.save_checkpoint(self.ckpt_path)  # collective: every rank enters, rank 0 writes
        self._uninstall()
        if trainer.is_global_zero:
            print(
                f"\nPreempted (SIGTERM) at step {trainer.global_step}: saved {self.ckpt_path}. Resume: rerun "
                f"the same command with ckpt_path={self.ckpt_path} (or ckpt_path=last and the same "
                "hydra.run.dir).",
                file=sys.stderr,
                flush=True,
            )
        raise Preempted(self.exit_code)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._uninstall()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._uninstall()
