"""RFN calibration: the frozen reference answers the calibration prompts, the matrix scores the answers,
and the module's RewardShaping freezes the statistics (shaping/rfn.py has the formulas).

A library function, so the reward-rescaling callback (callbacks/reward_rescaling.py, before RL) and the
pipeline's `rfn_calibration` stage (stages/kinds.py) run the same code.

Saved statistics (`optimization.normalization.statistics_path`, written by `save_statistics` in
shaping/rfn.py) are input too: `check_statistics` reads both files before they are loaded and
refuses a truncated, empty or non-JSON `rfn_statistics.json`, a damaged `rfn_statistics.safetensors`, or
tensors, statuses or per-prompt means whose size is not the number of dimensions the JSON lists, with a
ConfigError (exit 2) that names the file and the fix (delete the directory to recalibrate, or point the
key elsewhere), instead of a traceback from json, safetensors or torch.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from quark_lightning.data.schema import json_object_problem
from quark_lightning.infra.distributed import gather_objects, gather_rows, world_size
from quark_lightning.infra.errors import ConfigError
from quark_lightning.shaping.rfn import STATISTICS_FILE, STATISTICS_META

STATISTICS_KEY = "optimization.normalization.statistics_path"


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
    lengths = gather_rows(rollout.completion_mask.sum(1).to(pl_module.device))  # (M,) tokens
    pl_module.shaping.calibrate(all_scores, all_ids, lengths)
    if pl_module.shaping.weighting is not None:  # TADW starts from this batch, not from the risk prior
        with_ref = [p for p in prompts if p.get("reference")]
        rows = (
            pl_module.matrix.score(with_ref, [p["reference"] for p in with_ref]).scores.tolist()
            if with_ref
            else []
        )
        ref_rows = gather_objects(rows)  # ranks may hold different numbers of references
        ref_scores = torch.tensor(ref_rows, dtype=all_scores.dtype) if ref_rows else None
        ref_ids = gather_objects([p["id"] for p in with_ref])
        pl_module.shaping.initialize_weights(all_scores, all_ids, G, ref_scores, ref_ids, lengths)
    return all_scores.size(0)


# ---------------------------------------------------------------------------------------- saved statistics
def statistics_fix(directory: str) -> str:
    return (
        f"Fix: delete {directory} to calibrate again (the pipeline's rfn_calibration stage rewrites it), point "
        f"{STATISTICS_KEY} at another calibration, or set it to null to calibrate in this run."
    )


def _refuse(path: str, problem: str, directory: str) -> ConfigError:
    return ConfigError(f"{STATISTICS_KEY}: {path} is damaged: {problem}. {statistics_fix(directory)}")


def _read_meta(path: str, directory: str) -> dict[str, Any]:
    meta, problem = json_object_problem(path)
    if problem is not None:
        raise _refuse(path, problem, directory)
    dims = meta.get("dimensions")
    if not (isinstance(dims, list) and dims and all(isinstance(d, str) for d in dims)):
        raise _refuse(path, "'dimensions' is not a non-empty list of dimension names", directory)
    if not isinstance(meta.get("mode"), str):
        raise _refuse(path, "'mode' is missing or not a string", directory)
    status = meta.get("status")
    if not (
        isinstance(status, list) and len(status) == len(dims) and all(isinstance(x, str) for x in status)
    ):
        raise _refuse(path, f"'status' is not a list of {len(dims)} strings (one per dimension)", directory)
    means = meta.get("prompt_means")
    if not isinstance(means, dict):
        raise _refuse(path, "'prompt_means' is missing or not an object", directory)
    for prompt_id, row in means.items():
        if not (
            isinstance(row, list)
            and len(row) == len(dims)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
        ):
            raise _refuse(
                path,
                f"'prompt_means' of prompt {prompt_id!r} is not a list of {len(dims)} numbers",
                directory,
            )
    return meta


def check_statistics(directory: str) -> None:
    """Refuse saved RFN statistics that cannot be loaded as they are (see the module docstring).

    A missing `rfn_statistics.json`, other dimension names than the matrix's and another mode are left to
    `load_statistics` (shaping/rfn.py), which says so with its own fix.
    """
    from safetensors import SafetensorError, safe_open

    directory = os.path.expanduser(str(directory))
    meta_path = os.path.join(directory, STATISTICS_META)
    if not os.path.isfile(meta_path):
        return
    dims = _read_meta(meta_path, directory)["dimensions"]
    path = os.path.join(directory, STATISTICS_FILE)
    if not os.path.isfile(path):
        raise _refuse(path, f"missing (its {STATISTICS_META} is there)", directory)
    try:
        with safe_open(path, framework="pt") as fh:  # the header, checked against the file's size
            tensors = {k: fh.get_tensor(k) for k in ("mean", "std", "count") if k in fh.keys()}
    except (SafetensorError, OSError) as err:
        size = os.path.getsize(path)
        problem = "empty (0 bytes)" if size == 0 else f"{size:,} bytes, truncated or not a safetensors file"
        raise _refuse(path, f"{problem} ({err})", directory) from err
    for key in ("mean", "std", "count"):
        tensor = tensors.get(key)
        if tensor is None:
            raise _refuse(path, f"no tensor {key!r}", directory)
        if tuple(tensor.shape) != (len(dims),):
            raise _refuse(
                path,
                f"tensor {key!r} has shape {tuple(tensor.shape)}, but {STATISTICS_META} lists "
                f"{len(dims)} dimensions",
                directory,
            )
        if not all(math.isfinite(v) for v in tensor.double().tolist()):
            raise _refuse(path, f"tensor {key!r} holds NaN or infinite values", directory)
    if any(v < 0 for v in tensors["std"].double().tolist()):
        raise _refuse(path, "tensor 'std' holds a negative value", directory)
