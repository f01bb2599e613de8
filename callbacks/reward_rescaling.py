"""Reward rescaling: calibrates Reference-Frozen Normalization before RL (optim/normalization.py).

At the start of training the frozen reference policy answers the calibration prompts G times; every
matrix dimension scores the answers; the scores are gathered over all ranks (each rank samples its own
shard of the prompts) and the per-dimension statistics are computed from the gathered whole, so they are
identical everywhere. They are then frozen for the stage: the statistics live in buffers of the module's
normalizer, so a resumed run restores them from the checkpoint and does not recalibrate, unless
`recalibrate=true` (a new stage, or the user asks).

The calibration report (mean, std, scored samples and status per dimension) is printed, logged to
TensorBoard as text and written to `<run_dir>/rfn_calibration.json` when `report_path` is set.

With `statistics_path` (the output of the pipeline's `rfn_calibration` stage) the statistics are loaded
from disk instead: the stage that calibrated them and the RL stage that uses them are then separate, and
a rerun of RL never recalibrates.
"""

from __future__ import annotations

import json
import os
from typing import Any

import lightning as L

from quark_lightning.distributed import gather_objects, gather_rows, world_size
from quark_lightning.optim.aggregation import NEEDS_NORMALIZER
from quark_lightning.optim.normalization import ReferenceFrozenNormalizer, load_statistics


def calibration_shard(records: list[dict[str, Any]], n: int, rank: int, world: int) -> list[dict[str, Any]]:
    """This rank's share of the first n prompts (n rounded down to a multiple of the world size)."""
    n = min(n, len(records))
    n -= n % world
    if n == 0:
        raise ValueError(f"RFN calibration needs at least {world} prompts (one per rank), got {len(records)}")
    return records[:n][rank::world]


def format_report(names: list[str], normalizer: ReferenceFrozenNormalizer) -> str:
    lines = [f"{'dimension':<28} {'mean':>10} {'std':>10} {'scored':>7}  status"]
    for k, name in enumerate(names):
        lines.append(
            f"{name:<28} {float(normalizer.mean[k]):>10.4f} {float(normalizer.std[k]):>10.4f} "
            f"{int(normalizer.count[k]):>7}  {normalizer.status[k]}"
        )
    return "\n".join(lines)


def calibrate(pl_module, records: list[dict[str, Any]], num_prompts: int, G: int, rank: int = 0) -> int:
    """Fit pl_module.normalizer on the frozen reference's own answers; returns the samples scored.

    Each rank answers its shard of the first `num_prompts` prompts G times; the scores are gathered so
    the statistics are identical on every rank."""
    prompts = calibration_shard(records, num_prompts, rank, world_size())
    rollout = pl_module.reference_rollout(prompts, G)
    scores = pl_module.matrix.score(rollout.prompts, rollout.completions).scores.to(pl_module.device)
    all_scores = gather_rows(scores)  # (M, K), identical on every rank
    all_ids = gather_objects([p["id"] for p in rollout.prompts])
    pl_module.normalizer.fit(all_scores, all_ids)
    return all_scores.size(0)


class ReferenceFrozenNormalization(L.Callback):
    def __init__(
        self,
        calibration_prompts: int = 32,
        num_generations: int | None = None,
        mode: str = "global",
        clip: float | None = 5.0,
        eps: float = 1e-6,
        min_count: int = 8,
        min_std: float = 1e-6,
        fallback_std: float = 1.0,
        recalibrate: bool = False,
        report_path: str | None = None,
        statistics_path: str | None = None,
    ):
        self.calibration_prompts = calibration_prompts
        self.num_generations = num_generations
        self.normalizer_kwargs = dict(
            mode=mode, clip=clip, eps=eps, min_count=min_count, min_std=min_std, fallback_std=fallback_std
        )
        self.recalibrate = recalibrate
        self.report_path = report_path
        self.statistics_path = statistics_path

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if pl_module.aggregator_name not in NEEDS_NORMALIZER:
            raise ValueError(
                f"the reward-rescaling callback needs optimization.aggregator rfn or rfn_tadw, "
                f"not {pl_module.aggregator_name!r}; use optimization=rfn or optimization=rfn_tadw"
            )
        # Before any checkpoint is restored: a resumed run loads the frozen statistics into this module.
        pl_module.normalizer = ReferenceFrozenNormalizer(
            len(pl_module.matrix.names), **self.normalizer_kwargs
        )

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        normalizer = pl_module.normalizer
        if bool(normalizer.fitted) and not self.recalibrate:
            if trainer.is_global_zero:
                print("RFN: using the frozen statistics restored from the checkpoint")
            return
        if self.statistics_path:
            load_statistics(normalizer, pl_module.matrix.names, self.statistics_path)
            if trainer.is_global_zero:
                print(f"RFN: using the frozen statistics calibrated in {self.statistics_path}")
            self._report(trainer, pl_module, int(normalizer.count.max()))
            return
        records = trainer.datamodule.calibration_records() if trainer.datamodule else None
        if not records:
            raise ValueError("RFN calibration needs prompts: pass a PromptDataModule to trainer.fit")
        G = self.num_generations or pl_module.config.num_generations
        num_samples = calibrate(pl_module, records, self.calibration_prompts, G, trainer.global_rank)
        self._report(trainer, pl_module, num_samples)

    def _report(self, trainer: L.Trainer, pl_module, num_samples: int) -> None:
        if not trainer.is_global_zero:
            return
        names, norm = pl_module.matrix.names, pl_module.normalizer
        text = format_report(names, norm)
        print(f"\nReference-Frozen Normalization, calibrated on {num_samples} reference answers:\n{text}")
        from quark_lightning.loggers import log_text

        log_text(trainer, "rfn/calibration", "```\n" + text + "\n```", 0)
        if self.report_path:
            os.makedirs(os.path.dirname(self.report_path) or ".", exist_ok=True)
            rows = {
                name: {
                    "mean": float(norm.mean[k]),
                    "std": float(norm.std[k]),
                    "count": int(norm.count[k]),
                    "status": norm.status[k],
                }
                for k, name in enumerate(names)
            }
            with open(self.report_path, "w") as fh:
                json.dump({"samples": num_samples, "mode": norm.mode, "dimensions": rows}, fh, indent=2)
        bad = [n for n, s in zip(names, norm.status) if s != "ok"]
        if bad:
            print(
                f"RFN: dimension(s) {', '.join(bad)} could not be calibrated fully (see status); they use "
                "fallback statistics and are clipped to +-"
                + ("inf" if norm.clip is None else f"{norm.clip:g}")
            )
