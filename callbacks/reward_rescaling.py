"""Reward rescaling: calibrates Reference-Frozen Normalization before RL (shaping/rfn.py).

At the start of training the frozen reference policy answers the calibration prompts G times; every
matrix dimension scores the answers; the scores are gathered over all ranks (each rank samples its own
shard of the prompts) and the per-dimension statistics are computed from the gathered whole, so they are
identical everywhere. They are then frozen for the stage. The statistics belong to the module's
RewardShaping (shaping/reward_shaping.py: `shaping.normalizer`, built from `optimization.normalization`); this
callback only drives it (`shaping.calibrate` via shaping/calibration.py, or `shaping.load_statistics`) and
keeps no copy, so a resumed run restores them from the checkpoint and does not recalibrate, unless
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

import lightning as L

from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.loggers import log_text
from quark_lightning.shaping.calibration import calibrate, calibration_shard, format_report  # noqa: F401


class ReferenceFrozenNormalization(L.Callback):
    def __init__(
        self,
        calibration_prompts: int = 32,
        num_generations: int | None = None,
        recalibrate: bool = False,
        report_path: str | None = None,
        statistics_path: str | None = None,
    ):
        self.calibration_prompts = calibration_prompts
        self.num_generations = num_generations
        self.recalibrate = recalibrate
        self.report_path = report_path
        self.statistics_path = statistics_path

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if pl_module.shaping.normalizer is None:
            raise ConfigError(
                f"the reward-rescaling callback calibrates RFN, but optimization.aggregator="
                f"{pl_module.shaping.aggregator} has no normalizer. Fix: use optimization=rfn or optimization=rfn_tadw"
            )
        pl_module.shaping.attach("reward_rescaling")

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        shaping = pl_module.shaping
        if shaping.calibrated and not self.recalibrate:
            if trainer.is_global_zero:
                print("RFN: using the frozen statistics restored from the checkpoint")
            return
        if self.statistics_path:
            shaping.load_statistics(self.statistics_path)
            if trainer.is_global_zero:
                print(f"RFN: using the frozen statistics calibrated in {self.statistics_path}")
            self._report(trainer, pl_module, int(shaping.normalizer.count.max()))
            return
        records = trainer.datamodule.calibration_records() if trainer.datamodule else None
        if not records:
            raise ConfigError("RFN calibration needs prompts: pass a PromptDataModule to trainer.fit")
        G = self.num_generations or pl_module.config.num_generations
        num_samples = calibrate(pl_module, records, self.calibration_prompts, G, trainer.global_rank)
        self._report(trainer, pl_module, num_samples)

    def _report(self, trainer: L.Trainer, pl_module, num_samples: int) -> None:
        if not trainer.is_global_zero:
            return
        names, norm = pl_module.matrix.names, pl_module.shaping.normalizer
        text = format_report(names, norm)
        print(f"\nReference-Frozen Normalization, calibrated on {num_samples} reference answers:\n{text}")

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
