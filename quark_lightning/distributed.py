"""Gathering across ranks, so statistics and weights are computed from the same data on every rank."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


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
