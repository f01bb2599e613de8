"""Reward at the start vs the end of training: printed at the end and written to `summary.json`.

Start and end are the means over the first and last `window` steps (single steps are noisy), for the
scalar reward and for every matrix dimension. The state is in the checkpoint, so a resumed run
reports the start of the original run.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import lightning as L


def window_mean(values: list[float], window: int, last: bool) -> float:
    vals = [v for v in (values[-window:] if last else values[:window]) if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


class RewardTrend(L.Callback):
    def __init__(self, window: int = 5, summary_path: str | None = None):
        self.window = window
        self.summary_path = summary_path
        self.history: dict[str, list[float]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        keys = ["reward"] + [f"rewards/{n}/mean" for n in pl_module.matrix.names]
        for key in keys:
            if key in metrics:
                self.history.setdefault(key, []).append(float(metrics[key]))

    def summary(self) -> dict[str, Any]:
        return {
            key: {
                "start": window_mean(vals, self.window, last=False),
                "end": window_mean(vals, self.window, last=True),
                "steps": len(vals),
            }
            for key, vals in self.history.items()
        }

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        summary = self.summary()
        print(f"\nReward, mean of the first vs the last {self.window} steps:")
        for key, row in summary.items():
            print(f"  {key:<36} start {row['start']:+.4f}   end {row['end']:+.4f}   ({row['steps']} steps)")
        if self.summary_path:
            os.makedirs(os.path.dirname(self.summary_path) or ".", exist_ok=True)
            with open(self.summary_path, "w") as fh:
                json.dump({"window": self.window, "metrics": summary}, fh, indent=2)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict.get("history", {}).items()}
