"""Tri-Factor Adaptive Dynamic Weighting, updated every step (shaping/tadw.py has the formulas).

The weights and their EMA state belong to the module's RewardShaping (shaping/reward_shaping.py); this callback
only drives it: after each step, the step's normalized and raw scores are gathered over all ranks and
handed to `pl_module.shaping.update_weights`, whose new weights the next step aggregates with. Every
rank computes the same update from the same gathered data, so weights are identical everywhere.
Weights and each factor are logged per dimension: `weights/<dim>`, `tadw/weakness/<dim>`,
`tadw/risk/<dim>`, `tadw/redundancy/<dim>`, `tadw/violation/<dim>`, `tadw/next_weight/<dim>`.
"""

from __future__ import annotations

import lightning as L

from quark_lightning.infra.distributed import gather_objects, gather_rows
from quark_lightning.infra.errors import ConfigError


class TriFactorWeightingCallback(L.Callback):
    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if pl_module.shaping.weighting is None:
            raise ConfigError(
                f"the weighting callback drives TADW, but optimization.aggregator={pl_module.shaping.aggregator} "
                "has none. Fix: use optimization=rfn_tadw"
            )
        pl_module.shaping.attach("weighting")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        record = pl_module.last_step
        if record is None or record.normalized is None:
            return
        z = gather_rows(record.normalized.to(pl_module.device))  # (N_total, K)
        raw = gather_rows(record.scores.to(pl_module.device))  # (N_total, K)
        ids = gather_objects([p["id"] for p in record.prompts])  # (N_total,)
        factors = pl_module.shaping.update_weights(z, raw, ids, pl_module.config.num_generations)
        weights = pl_module.shaping.weights
        metrics = {}
        for k, name in enumerate(pl_module.matrix.names):
            metrics[f"tadw/weakness/{name}"] = float(factors.weakness[k])
            metrics[f"tadw/risk/{name}"] = float(factors.risk[k])
            metrics[f"tadw/redundancy/{name}"] = float(factors.redundancy[k])
            metrics[f"tadw/violation/{name}"] = float(factors.violation[k])
            metrics[f"tadw/next_weight/{name}"] = float(weights[k])
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
