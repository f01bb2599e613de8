"""Gathering across ranks, so statistics and weights are computed from the same data on every rank, and
agreeing on a failure, so that one rank stopping stops every rank (`call_on_every_rank`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from quark_lightning.infra.errors import QuarkError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (n, ...) tensor in rank order -> (world * n, ...). Sizes must match."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate every rank's list of picklable objects in rank order."""
    if world_size() == 1:
        return list(items)
    out: list[list[Any]] = [None] * world_size()  # type: ignore[list-item]
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of every rank's tensor (a copy; the input is untouched). Identity on one process."""
    out = values.detach().clone()
    if world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_rows_padded(tensor: torch.Tensor, pad_value: float | int = 0, side: str = "right") -> torch.Tensor:
    """Like `gather_rows` for (n, L_rank) tensors whose second size differs by rank: pad to the widest."""
    if world_size() == 1:
        return tensor
    width = all_reduce_max_int(tensor.size(1), tensor.device)
    pad = tensor.new_full((tensor.size(0), width - tensor.size(1)), pad_value)
    return gather_rows(torch.cat([pad, tensor] if side == "left" else [tensor, pad], dim=1))


def all_reduce_max_int(value: int, device: torch.device | str = "cpu") -> int:
    out = torch.tensor([value], device=device)
    if world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return int(out)


class RankStoppedError(QuarkError, RuntimeError):
    """A rank stopped the run at a step boundary; every rank raises it with the same message."""


def agree_on_failure(message: str | None, device: torch.device | str = "cpu") -> str | None:
    """The failure the ranks agree on at a step boundary: None when no rank failed, else the message of
    the lowest failing rank, as `rank R: message`. A collective: every rank calls it, failed or not
    (one small all-reduce each step; the messages are gathered only when some rank failed)."""
    if world_size() == 1:
        return message
    if not all_reduce_max_int(int(message is not None), device):
        return None
    messages = gather_objects([message])
    first = next(r for r, m in enumerate(messages) if m is not None)
    return f"rank {first}: {messages[first]}"


def call_on_every_rank(fn: Callable[[], Any], device: torch.device | str = "cpu") -> Any:
    """`fn()` on this rank; when it raises a QuarkError on any rank (a scorer failing under `stop`),
    every rank raises RankStoppedError with the same message, instead of the other ranks waiting at
    the next collective. One process: `fn()` as is."""
    if world_size() == 1:
        return fn()
    try:
        result, message = fn(), None
    except QuarkError as err:
        result, message = None, str(err)
    agreed = agree_on_failure(message, device)
    if agreed is not None:
        raise RankStoppedError(f"{agreed} (every rank stopped at this step)")
    return result


def is_sharded(module: torch.nn.Module) -> bool:
    """True when the module's parameters are sharded across ranks (FSDP2 DTensors, FSDP1 flat params).

    Sharded modules run collectives in every forward, so every rank must make the same number of
    forward calls (generation then needs `synced_gpus`), and FSDP2 cannot run under `inference_mode`.
    """
    from torch.distributed.tensor import DTensor

    for p in module.parameters():
        return isinstance(p, DTensor) or type(p).__name__ == "FlatParameter" or _in_fsdp1(module)
    return False


def _in_fsdp1(module: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in module.modules())


def token_level_rank_scale(local_tokens: torch.Tensor) -> float:
    """Factor that turns a rank's token-mean loss into its share of the global token mean.

    DDP and FSDP average gradients over ranks. A token-level (`dapo`) loss divides by the rank's own token
    count, so the average of rank means is not the mean over all tokens when ranks hold different numbers
    of tokens. Scaling rank r's loss by world * tokens_r / tokens_total makes the averaged gradient equal
    the single-process gradient of sum(all tokens) / tokens_total (what TRL does by gathering the count).
    """
    world = world_size()
    if world == 1:
        return 1.0
    total = all_reduce_sum(local_tokens.float().reshape(1))
    return float(world * local_tokens.float() / total.clamp(min=1.0))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float, wrapped: Any = None) -> float:
    """Clip the global gradient norm; returns the norm before clipping as a float.

    FSDP1 holds flat sharded gradients: its root unit (`wrapped`, the strategy's model) must compute the
    norm. FSDP2 gradients are DTensors: `clip_grad_norm_` reduces across shards and returns a DTensor.
    """
    if wrapped is not None and type(wrapped).__name__ == "FullyShardedDataParallel":
        return float(wrapped.clip_grad_norm_(max_norm))
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


# ---------------------------------------------------------------------------------- logging view
TOKEN_MEAN_STATS = ("kl", "clip_low", "clip_high", "clip_region", "entropy")


def global_step_view(rollout, scores: torch.Tensor, aggregated, frac_zero_std, stats: dict[str, float]):
    """What one GRPO step logs, over the whole (all-rank) batch. Identity on one process.

    Rows (completions, scores (N, K), rewards) are gathered in rank order, so the logged reward statistics
    and lengths are those of the global batch. `loss` is the mean over ranks (each rank's loss is its share
    of the global loss, see `token_level_rank_scale`); the token-level statistics (KL, clip ratios,
    entropy) are averaged weighted by each rank's completion tokens; `frac_reward_zero_std` is the mean
    over ranks (every rank holds the same number of groups); the gradient norm is already global.
    Every rank must call this (collectives). -> (rollout, scores, aggregated, frac_zero_std, stats)
    """
    if world_size() == 1:
        return rollout, scores, aggregated, frac_zero_std, stats
    import dataclasses

    tokens = rollout.completion_mask.sum().float()
    token_means = [k for k in (*TOKEN_MEAN_STATS, "sampling/kl", "sampling/capped_share") if k in stats]
    summed = all_reduce_sum(
        torch.stack(
            [torch.tensor(float(stats["loss"])), torch.tensor(float(frac_zero_std)), tokens.cpu()]
            + [torch.tensor(float(stats[k])) * tokens.cpu() for k in token_means]
        ).to(scores.device)
    )  # (3 + len(token_means),): every rank has the same keys (the same engine)
    world, total_tokens = world_size(), summed[2].clamp(min=1.0)
    stats = dict(stats, loss=float(summed[0] / world))
    stats.update({k: float(summed[3 + i] / total_tokens) for i, k in enumerate(token_means)})
    rollout = dataclasses.replace(
        rollout,
        sampling_logp=None,  # per-token sampler log-probs stay on their rank (not logged)
        prompt_ids=gather_rows_padded(rollout.prompt_ids, 0, side="left"),  # pad ids sit under mask 0
        prompt_mask=gather_rows_padded(rollout.prompt_mask, 0, side="left"),
        completion_ids=gather_rows_padded(rollout.completion_ids, 0),
        completion_mask=gather_rows_padded(rollout.completion_mask, 0),
        completions=gather_objects(rollout.completions),
        prompts=gather_objects(rollout.prompts),
        truncated=gather_rows(rollout.truncated),
        prompt_truncated=gather_rows(rollout.prompt_truncated),
    )
    gather_opt = lambda t: gather_rows(t) if t is not None else None  # noqa: E731
    aggregated = dataclasses.replace(
        aggregated,
        reward=gather_rows(aggregated.reward),
        advantages=gather_opt(aggregated.advantages),
        normalized=gather_opt(aggregated.normalized),
    )
    return rollout, gather_rows(scores), aggregated, float(summed[1] / world), stats


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The module's unsharded state dict on rank 0 (CPU), for exporting a sharded (FSDP2) policy.

    A collective when the module is sharded: every rank must call it; ranks other than 0 get {}. Returns
    None for an unsharded module (save it as it is).
    """
    if not is_sharded(module):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
