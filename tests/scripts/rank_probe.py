"""A Lightning callback for the multi-node launch tests: each rank writes what it ran to
`<out_dir>/rank<global rank>.json` at the end of training (added with `+callbacks.rank_probe=...`).

Recorded: the ranks and sizes Lightning read from the launcher's environment (torchrun or SLURM), the
cluster environment class it chose, the optimizer steps, the training batches this rank ran, and a
checksum of the policy's parameters (DDP keeps every rank's copy equal, so equal checksums mean the ranks
took the same steps on the same averaged gradients).
"""

from __future__ import annotations

import json
import os

import lightning as L
import torch


class RankProbe(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_end(self, trainer, pl_module):
        with torch.no_grad():
            checksum = sum(float(p.double().sum()) for p in pl_module.policy.parameters())
        env = trainer.strategy.cluster_environment
        record = {
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "cluster_environment": type(env).__name__ if env is not None else None,
            "main_address": env.main_address if env is not None else None,
            "global_step": trainer.global_step,
            "batches": self.batches,
            "policy_checksum": checksum,
        }
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(record, fh, indent=2)
