"""Learning-rate schedules, built as `_partial_` objects from the config (TRL's lr_scheduler_type names).

    algorithm.lr_scheduler:
      _target_: quark_lightning.infra.schedules.lr_scheduler
      _partial_: true           # Hydra returns lr_scheduler(...) waiting for the optimizer
      name: constant_with_warmup   # constant | constant_with_warmup | linear | cosine | cosine_with_min_lr
      warmup_steps: 0
      total_steps: ${trainer.max_steps}   # optimizer steps (linear and cosine decay to their end)
      min_lr_rate: 0.0          # cosine_with_min_lr: the floor as a fraction of the peak lr

The schedules are transformers' (`transformers.get_scheduler`, the functions TRL's `lr_scheduler_type`
selects), stepped once per optimizer step. With warmup W the rate at step s < W is lr * s / W (0 at the
first step); `linear` then falls to 0 at `total_steps`, `cosine` follows lr * 0.5 * (1 + cos(pi * p)) with
p = (s - W) / (total_steps - W).

`linear_warmup` is the other schedule, the one warmup of the three trainers: the SFT warm start
(`warmstart.lr_scheduler`), the reward model (`reward_model.lr_scheduler`) and GRPO when
`algorithm.lr_scheduler` is null. With warmup W the rate at optimizer step s (0-based) is
lr * min(1, (s + 1) / (W + 1)) (lr / (W + 1) at the first step, the full lr from step W on); W = 0: constant.

    warmstart.lr_scheduler:
      _target_: quark_lightning.infra.schedules.linear_warmup
      _partial_: true
      warmup_steps: ${..warmup_steps}
"""

from __future__ import annotations

from typing import Any

import torch

from quark_lightning.infra.errors import ConfigError

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr")


def check_schedule(name: str, warmup_steps: int, total_steps: int | None, where: str) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if name not in SCHEDULES:
        raise ConfigError(
            f"{where}.name: got {name!r}, expected one of {list(SCHEDULES)}. Fix: {where}.name=cosine"
        )
    if not is_int(warmup_steps) or warmup_steps < 0:
        raise ConfigError(f"{where}.warmup_steps: got {warmup_steps!r}, expected an integer >= 0")
    if name == "constant" and warmup_steps:
        raise ConfigError(f"{where}: 'constant' has no warmup. Fix: {where}.name=constant_with_warmup")
    if name in ("linear", "cosine", "cosine_with_min_lr") and (
        not is_int(total_steps) or total_steps <= warmup_steps
    ):
        raise ConfigError(
            f"{where}.total_steps: got {total_steps!r}, expected an integer > warmup_steps ({warmup_steps}) "
            f"for a decaying schedule. Fix: {where}.total_steps=<the run's optimizer steps>"
        )


def lr_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_lr_rate: float = 0.0,
    where: str = "algorithm.lr_scheduler",
) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import get_scheduler

    check_schedule(name, warmup_steps, total_steps, where)
    extra = {"min_lr_rate": float(min_lr_rate)} if name == "cosine_with_min_lr" else None
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=extra,
    )


def linear_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr * min(1, (s + 1) / (W + 1)) at optimizer step s; W = warmup_steps (a negative one counts as 0)."""
    warmup = max(0, warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
    )


def validate_scheduler_factory(factory: Any, where: str = "algorithm.lr_scheduler") -> None:
    """Build the schedule once on a throwaway optimizer, so a bad value stops the run before any model loads."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        factory(probe)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here is a config problem to report
        raise ConfigError(f"{where}: could not build the schedule: {type(err).__name__}: {err}") from err
