"""Lightning strategies for GRPO, chosen with `trainer=NAME` (conf/trainer/*.yaml).

    cpu / gpu    one process (`strategy: auto`)
    ddp          data parallel: every rank holds the whole policy, gradients are averaged
    fsdp         FSDP1 (GPU only): Lightning's FSDPStrategy, one FSDP unit per decoder layer
    fsdp2        FSDP2 through Lightning's ModelParallelStrategy: `fully_shard` per decoder layer, applied
                 in `GRPOModule.configure_model`; every rank is a data-parallel (sharding) rank
    deepspeed    DeepSpeed ZeRO stage 2 (optional extra `deepspeed`; GPU)
    multinode    any of the above with `trainer.num_nodes > 1`, launched by torchrun or SLURM

In every strategy a prompt's G completions are sampled, scored and turned into advantages on one rank;
what must be global (RFN statistics, TADW weights, logged reward statistics, the token count of a
token-level loss) is gathered or reduced across ranks (quark_lightning/infra/distributed.py).

Exactness across ranks (tests/infra/test_distributed_equivalence.py): with the same global batch, 2 ranks give
the single-process loss, advantages, RFN statistics, TADW weights and parameters for the loss types
`grpo`, `dr_grpo` and `dapo` (group advantages only need the rank's own groups). `scale_rewards: batch`
and `gdpo`'s batch re-normalization need the whole batch: GRPOModule.shape_rewards gathers the scores of
every rank, aggregates the global batch and keeps its own rows, as TRL gathers them (tested too).

A YAML `strategy:` is either a Lightning name (`ddp`) or a mapping with `_target_` naming one of the
builders below; `build_strategy` turns the mapping into a strategy object.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch import nn

from quark_lightning.infra.errors import ConfigError


def build_strategy(spec: str | dict[str, Any] | Strategy) -> str | Strategy:
    """A Lightning strategy name passes through; a `{_target_: ...}` mapping is instantiated."""
    if isinstance(spec, dict):
        from hydra.utils import get_object  # called directly so a ConfigError reaches the user unwrapped

        kwargs = dict(spec)
        return get_object(kwargs.pop("_target_"))(**kwargs)
    return spec


# ---------------------------------------------------------------------------------- decoder layers
def is_decoder_layer(module: nn.Module) -> bool:
    """A transformer block: the unit of sharding (HF names them `*DecoderLayer` / lists them in
    `_no_split_modules`)."""
    return type(module).__name__.endswith(("DecoderLayer", "Block"))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_decoder_layer(m)]


# ---------------------------------------------------------------------------------- FSDP2
class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (`fully_shard`) over all ranks: data-parallel size = world size, tensor-parallel size 1.

    Lightning's ModelParallelStrategy by default makes the data-parallel size the number of nodes and
    tensor-parallel the GPUs of a node; GRPO here shards for memory and is data parallel on every rank, so
    the sampler gives each rank its own prompts. The sharding itself is applied by the LightningModule's
    `configure_model` (see `shard_module`). `save_distributed_checkpoint=False` writes one full
    checkpoint file (what `ckpt_path=` resume and the policy export expect); set it true for big models.
    """

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs: Any):
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank shards and holds data
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loader, plus the modules' extra state (e.g. the RFN statuses and anchors).

        Lightning loads a full checkpoint parameter by parameter through torch's distributed state-dict
        API, which hands each module's `set_extra_state` a placeholder instead of the saved value. The
        placeholder is ignored while loading, and the saved values are applied afterwards.
        """
        path = Path(self.broadcast(checkpoint_path))
        saved = {}
        if path.is_file():
            full = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            saved = {k: v for k, v in full.get("state_dict", {}).items() if k.endswith(EXTRA_STATE_SUFFIX)}
        with _ignore_extra_state_placeholders(self.lightning_module):
            checkpoint = super().load_checkpoint(path, weights_only=weights_only)
        for key, value in saved.items():
            owner = key[: -len(EXTRA_STATE_SUFFIX)].rstrip(".")
            self.lightning_module.get_submodule(owner).set_extra_state(value)
        return checkpoint


EXTRA_STATE_SUFFIX = "_extra_state"


@contextmanager
def _ignore_extra_state_placeholders(module: nn.Module):
    """While active, `set_extra_state` of every submodule skips torch's `_EXTRA_STATE` placeholder."""
    patched = []
    for sub in module.modules():
        if type(sub).get_extra_state is not nn.Module.get_extra_state:
            original = sub.set_extra_state

            def guarded(state, _original=original):
                if type(state).__name__ != "_EXTRA_STATE":
                    _original(state)

            sub.set_extra_state = guarded
            patched.append(sub)
    try:
        yield
    finally:
        for sub in patched:
            del sub.set_extra_state


def shard_module(model: nn.Module, mesh, reshard_after_forward: bool = True) -> nn.Module:
    """Apply FSDP2 `fully_shard` to each decoder layer, then to the model root. Idempotent."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


# ---------------------------------------------------------------------------------- FSDP1
def fsdp_strategy(**kwargs: Any) -> FSDPStrategy:
    """FSDP1 with one FSDP unit per decoder layer. `use_orig_params=True` because the root unit holds
    both trainable (policy) and frozen (reference copy) parameters. GPU only (Lightning refuses CPU)."""
    from torch.distributed.fsdp.wrap import CustomPolicy

    kwargs.setdefault("use_orig_params", True)
    return FSDPStrategy(auto_wrap_policy=CustomPolicy(is_decoder_layer), **kwargs)


# ---------------------------------------------------------------------------------- DeepSpeed
def deepspeed_strategy(stage: int = 2, **kwargs: Any) -> Strategy:
    """DeepSpeed ZeRO (optional extra). Fails before training with the fix when DeepSpeed is missing."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "trainer=deepspeed: the `deepspeed` package is not installed. "
            "Fix: pip install -e '.[deepspeed]' (needs CUDA), or use trainer=ddp or trainer=fsdp2"
        )
    if not torch.cuda.is_available():
        raise ConfigError("trainer=deepspeed needs CUDA GPUs. Fix: use trainer=ddp or trainer=fsdp2 on CPU")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=stage, **kwargs)
