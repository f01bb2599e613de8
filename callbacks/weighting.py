"""Tri-Factor Adaptive Dynamic Weighting, updated every step (optim/weighting.py has the formulas).

After each step, the step's normalized and raw scores are gathered over all ranks and fed to
`TriFactorWeighting.update`; the new weights go into the module's `matrix_weights` buffer, which the next
step's aggregation uses. Every rank computes the same update from the same gathered data, so weights are
identical everywhere; the TADW state (weights, EMAs, step count) lives in buffers of `pl_module.weighting`
and is saved in the checkpoint. Weights and each factor are logged per dimension:
`weights/<dim>`, `tadw/weakness/<dim>`, `tadw/risk/<dim>`, `tadw/redundancy/<dim>`, `tadw/violation/<dim>`.
"""

from __future__ import annotations

import lightning as L

from quark_lightning.distributed import gather_rows
from quark_lightning.optim.weighting import TriFactorWeighting


class TriFactorWeightingCallback(L.Callback):
    def __init__(self, **tadw_kwargs):
        self.tadw_kwargs = tadw_kwargs

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if pl_module.normalizer is None:
            raise ValueError("TADW works on RFN-normalized rewards; use optimization=rfn_tadw")
        dims = pl_module.matrix.dimensions
        weighting = TriFactorWeighting(
            risk=[d.risk for d in dims],
            targets=[d.target for d in dims],
            prior=[d.weight for d in dims],  # static weights: prior multipliers, 0 = off
            **self.tadw_kwargs,
        )
        pl_module.weighting = weighting.to(pl_module.device)  # registered: in state_dict and checkpoints
        pl_module.matrix_weights.copy_(weighting.weights)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        record = pl_module.last_step
        if record is None or record.normalized is None:
            return
        z = gather_rows(record.normalized.to(pl_module.device))  # (N_total, K)
        raw = gather_rows(record.scores.to(pl_module.device))
        norm = pl_module.normalizer
        target_z = (pl_module.weighting.targets - norm.mean) / (norm.std + norm.eps)
        factors = pl_module.weighting.update(z, raw, target_z)
        pl_module.matrix_weights.copy_(pl_module.weighting.weights)
        metrics = {}
        for k, name in enumerate(pl_module.matrix.names):
            metrics[f"tadw/weakness/{name}"] = float(factors.weakness[k])
            metrics[f"tadw/risk/{name}"] = float(factors.risk[k])
            metrics[f"tadw/redundancy/{name}"] = float(factors.redundancy[k])
            metrics[f"tadw/violation/{name}"] = float(factors.violation[k])
            metrics[f"tadw/next_weight/{name}"] = float(pl_module.weighting.weights[k])
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
