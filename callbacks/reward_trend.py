"""Reward at the start vs the end of training: printed at the end and written to `summary.json`.

Start and end are the means over the first and last `window` steps (single steps are noisy), for the
scalar reward and for every matrix dimension. A run of fewer than 2 * `window` steps averages
steps // 2 steps at each end instead (at least 1), so start and end never share a step; with a
single step there is no trend (start = end, and the print says so). The window actually used is
printed and written to `summary.json` (`window`; `configured_window` is the `window` argument). The
state is in the checkpoint, so a resumed run reports the start of the original run.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import lightning as L


def trend_window(steps: int, window: int) -> int:
    """Steps averaged at each end: `window`, or steps // 2 (at least 1) below 2 * window steps."""
    return max(1, min(window, steps // 2))


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
        rows = {}
        for key, vals in self.history.items():
            window = trend_window(len(vals), self.window)
            rows[key] = {
                "start": window_mean(vals, window, last=False),
                "end": window_mean(vals, window, last=True),
                "steps": len(vals),
                "window": window,
            }
        return rows

    @staticmethod
    def header(summary: dict[str, Any]) -> str | None:
        """The printed title with the window actually used; None when metrics differ (then per row)."""
        shapes = {(row["window"], row["steps"]) for row in summary.values()}
        if len(shapes) != 1:
            return None
        ((window, steps),) = shapes
        if steps == 1:
            return "Reward after 1 step (no trend: start and end are that one step):"
        return f"Reward, mean of the first {window} vs the last {window} of {steps} steps:"

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        summary = self.summary()
        header = self.header(summary)
        print(f"\n{header or 'Reward, mean of the first vs the last steps (window and steps per row):'}")
        for key, row in summary.items():
            span = (
                f"{row['steps']} steps" if header else f"first/last {row['window']} of {row['steps']} steps"
            )
            print(f"  {key:<36} start {row['start']:+.4f}   end {row['end']:+.4f}   ({span})")
        if self.summary_path:
            os.makedirs(os.path.dirname(self.summary_path) or ".", exist_ok=True)
            # `window`: the one actually used (the reward's, the longest history when it is absent)
            main = summary.get("reward") or max(summary.values(), key=lambda row: row["steps"])
            with open(self.summary_path, "w") as fh:
                json.dump(
                    {"window": main["window"], "configured_window": self.window, "metrics": summary},
                    fh,
                    indent=2,
                )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict.get("history", {}).items()}
