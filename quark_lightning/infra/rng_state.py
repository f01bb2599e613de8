"""Random streams in every checkpoint, so a resumed run samples what the uninterrupted run would have.

Lightning saves no RNG state. This callback's `state_dict` holds every global stream of every rank (torch
CPU and CUDA, Python `random`, NumPy; `quark_lightning/infra/checkpointing.py`), captured when the checkpoint is
written, i.e. at the end of a step. A resumed run sets them back in `on_train_start`, after everything that
only the resumed run does (building and loading the model, the loader, the other callbacks' start hooks),
so the next rollout draws from exactly the state the interrupted run had after that step. The samplers'
own generators travel with the data position (`quark_lightning/data/resumable.py`).

Guarantee: with deterministic kernels and the same number of ranks, the random numbers consumed after a
resume equal those of the uninterrupted run. With another number of ranks the streams are not restored
(there is no right answer) and a warning says so.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L

from quark_lightning.infra.checkpointing import capture_rng_state, restore_rng_state
from quark_lightning.infra.distributed import gather_objects


class RNGStateCallback(L.Callback):
    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        # every rank writes its checkpoint state (a collective save), so every rank takes part in the gather
        return {"ranks": gather_objects([capture_rng_state()])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = list(state_dict.get("ranks", [])) or None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ranks, self._to_restore = self._to_restore, None
        if ranks is None:
            return
        if len(ranks) != trainer.world_size:
            warnings.warn(
                f"the checkpoint holds the random streams of {len(ranks)} rank(s), this run has "
                f"{trainer.world_size}: they are not restored, so sampling after the resume differs from the "
                "uninterrupted run's. Fix: resume with the same trainer.devices and trainer.num_nodes.",
                stacklevel=2,
            )
            return
        restore_rng_state(ranks[trainer.global_rank])
