"""RFN calibration: the frozen reference answers the calibration prompts, the matrix scores the answers,
and the module's RewardShaping freezes the statistics (optim/normalization.py has the formulas).

A library function, so the reward-rescaling callback (callbacks/reward_rescaling.py, before RL) and the
pipeline's `rfn_calibration` stage (pipeline/stages.py) run the same code.
"""

from __future__ import annotations

from typing import Any

from quark_lightning.distributed import gather_objects, gather_rows, world_size
from quark_lightning.errors import ConfigError


def calibration_shard(records: list[dict[str, Any]], n: int, rank: int, world: int) -> list[dict[str, Any]]:
    """This rank's share of the first n prompts (n rounded down to a multiple of the world size)."""
    n = min(n, len(records))
    n -= n % world
    if n == 0:
        raise ConfigError(
            f"RFN calibration needs at least {world} prompts (one per rank), got {len(records)}. "
            "Fix: raise optimization.normalization.calibration_prompts or add prompts"
        )
    return records[:n][rank::world]


def format_report(names: list[str], normalizer) -> str:
    """The calibration table: mean, std, scored samples and status per dimension."""
    lines = [f"{'dimension':<28} {'mean':>10} {'std':>10} {'scored':>7}  status"]
    for k, name in enumerate(names):
        lines.append(
            f"{name:<28} {float(normalizer.mean[k]):>10.4f} {float(normalizer.std[k]):>10.4f} "
            f"{int(normalizer.count[k]):>7}  {normalizer.status[k]}"
        )
    return "\n".join(lines)


def calibrate(pl_module, records: list[dict[str, Any]], num_prompts: int, G: int, rank: int = 0) -> int:
    """Fit pl_module.shaping's normalizer on the frozen reference's own answers; returns the samples scored.

    Each rank answers its shard of the first `num_prompts` prompts G times; the scores are gathered so
    the statistics are identical on every rank."""
    prompts = calibration_shard(records, num_prompts, rank, world_size())
    rollout = pl_module.reference_rollout(prompts, G)
    scores = pl_module.matrix.score(rollout.prompts, rollout.completions).scores.to(pl_module.device)
    all_scores = gather_rows(scores)  # (M, K), identical on every rank
    all_ids = gather_objects([p["id"] for p in rollout.prompts])
    pl_module.shaping.calibrate(all_scores, all_ids)
    return all_scores.size(0)
