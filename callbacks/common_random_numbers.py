"""Common random numbers: every arm of a paired comparison samples from the same random stream.

Runs that differ only in `optimization=` consume the global torch RNG differently before RL (the RFN
arms generate calibration answers, the others do not), so the same `seed` would otherwise give each arm
different sampling noise at every step. This callback reseeds the global RNGs at the start of every
training step from (`seed`, step), so step t of every arm draws its completions from the same stream,
and appends the step's prompt ids to `prompts_path` (JSON lines), so a benchmark can check that the
arms of a seed saw the same prompts in the same order (the prompt order itself comes from the data
sampler, seeded once from `seed`). Used by benchmarks/efficacy_real.py; resumable, since the seed
depends only on the step.
"""

from __future__ import annotations

import json
import os
import random

import lightning as L
import torch


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


class CommonRandomNumbers(L.Callback):
    def __init__(self, seed: int, prompts_path: str | None = None):
        self.seed, self.prompts_path = int(seed), prompts_path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        s = step_seed(self.seed, trainer.global_step)
        torch.manual_seed(s)
        random.seed(s)
        if self.prompts_path and trainer.is_global_zero:
            os.makedirs(os.path.dirname(self.prompts_path) or ".", exist_ok=True)
            with open(self.prompts_path, "a") as fh:
                fh.write(json.dumps({"step": trainer.global_step, "ids": [p["id"] for p in batch]}) + "\n")
