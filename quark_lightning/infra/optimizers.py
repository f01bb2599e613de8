"""The one optimizer factory of the three trainers: GRPO, the SFT warm start and the reward model.

Each trainer's group has an `optimizer` node, a `_partial_` Hydra node that waits for the parameters
(or parameter groups), and an `lr_scheduler` node that waits for the optimizer (infra/schedules.py):

    warmstart.optimizer:                 # reward_model.optimizer alike; algorithm.optimizer adds betas
      _target_: torch.optim.AdamW
      _partial_: true
      lr: ${..lr}
      weight_decay: ${..weight_decay}
    warmstart.lr_scheduler:
      _target_: quark_lightning.infra.schedules.linear_warmup
      _partial_: true
      warmup_steps: ${..warmup_steps}

The flat keys (`lr`, `weight_decay`, `betas`, `warmup_steps`) stay the values: the shipped nodes only
point at them. A node left out (or null) is the same AdamW and warmup built from the flat keys, so a
config written before these nodes, and code that builds a module directly, train exactly as before.
Any `torch.optim` optimizer (or another callable taking the parameters) can be named instead:
`warmstart.optimizer._target_=torch.optim.SGD`. A node given on the command line is merged into the
shipped one, so `algorithm.optimizer` (whose AdamW node has `betas`, which SGD does not take) is replaced
whole: `algorithm.optimizer=null 'algorithm.optimizer={_target_: torch.optim.SGD, _partial_: true, lr: 0.01}'`
(cli/run.py builds it; config/groups.py names a key the optimizer does not take). The reward model passes
parameter groups (backbone at `lr`, head at `head_lr`), whose own `lr` overrides the node's.

`configure_optimizer` is what each module's `configure_optimizers` returns (scheduler stepped per
optimizer step).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from omegaconf import OmegaConf

from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.schedules import linear_warmup, validate_scheduler_factory

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def adamw(lr: float, weight_decay: float = 0.0, betas: Iterable[float] | None = None) -> OptimizerFactory:
    """AdamW from the flat keys, waiting for the parameters (what a missing `optimizer` node means)."""
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if betas is not None:
        kwargs["betas"] = tuple(betas)
    return functools.partial(torch.optim.AdamW, **kwargs)


def _plain_partial(factory: Any) -> Any:
    """Hydra hands list / dict arguments over as OmegaConf containers: make them plain (betas a tuple, as
    torch's defaults are), so the optimizer's param_groups and checkpoints hold ordinary values."""
    if not isinstance(factory, functools.partial):
        return factory
    keywords = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in factory.keywords.items()
    }
    if isinstance(keywords.get("betas"), list):
        keywords["betas"] = tuple(keywords["betas"])
    return functools.partial(factory.func, *factory.args, **keywords)


def _instantiate_partial(node: Any, where: str, what: str) -> Callable:
    from hydra.utils import instantiate

    if not OmegaConf.is_dict(node) and not isinstance(node, dict):
        if callable(node):
            return node  # already built (code that passes a factory)
        raise ConfigError(f"{where}: got {node!r}, expected a `_target_` node or null. Fix: {where}=null")
    if not node.get("_partial_"):
        raise ConfigError(
            f"{where}: needs `_partial_: true` (it is built later, on the {what}). "
            f"Fix: {where}._partial_=true"
        )
    try:
        factory = instantiate(node)
    except Exception as err:  # noqa: BLE001 - a wrong _target_ or argument is a config problem
        cause = err.__cause__ or err
        raise ConfigError(
            f"{where}: could not be built ({type(cause).__name__}: {cause}). Fix the `_target_` or the "
            f"arguments under {where}."
        ) from err
    return factory


def optimizer_factory(node: Any, where: str) -> OptimizerFactory | None:
    """A group's `optimizer` node as params -> optimizer, checked on a throwaway parameter; None if unset."""
    if node is None:
        return None
    factory = _plain_partial(_instantiate_partial(node, where, "parameters"))
    probe = [torch.zeros(1, requires_grad=True)]
    try:
        built = factory(probe)
    except Exception as err:  # noqa: BLE001 - e.g. an argument the optimizer does not take, a bad value
        raise ConfigError(f"{where}: could not build the optimizer: {type(err).__name__}: {err}") from err
    if not isinstance(built, torch.optim.Optimizer):
        raise ConfigError(f"{where}: built a {type(built).__name__}, expected a torch.optim.Optimizer")
    return factory


def scheduler_factory(node: Any, where: str) -> SchedulerFactory | None:
    """A group's `lr_scheduler` node as optimizer -> scheduler, checked on a throwaway optimizer."""
    if node is None:
        return None
    factory = _instantiate_partial(node, where, "optimizer")
    validate_scheduler_factory(factory, where)
    return factory


def configure_optimizer(
    params: Iterable[Any],
    optimizer: OptimizerFactory | None = None,
    lr_scheduler: SchedulerFactory | None = None,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: Iterable[float] | None = None,
    warmup_steps: int = 0,
) -> dict[str, Any]:
    """Lightning's `configure_optimizers` value: `optimizer(params)` (default: AdamW(lr, weight_decay,
    betas)) and `lr_scheduler(optimizer)` (default: linear_warmup(warmup_steps)), stepped per step."""
    factory = optimizer if optimizer is not None else adamw(lr, weight_decay, betas)
    opt = factory(params)
    sched = lr_scheduler(opt) if lr_scheduler is not None else linear_warmup(opt, warmup_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
