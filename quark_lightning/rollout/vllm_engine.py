"""Rollout with vLLM (GPU; optional extra: `pip install -e ".[vllm]"`); implements `RolloutEngine`.

EXPERIMENTAL, UNVERIFIED: written against vLLM V1's API (the only engine since vLLM 0.10) from its source
and TRL's colocate mode, but it has never run (no GPU with vLLM in this project's CI or tests). Only the
weight-merge function `merged_policy_weights` is tested, on CPU.

Colocated mode: every rank owns one `vllm.LLM` on its own GPU (tensor-parallel size 1 by default) and
samples the completions of its own prompts, as TRL's `vllm_mode="colocate"`. Before each `generate` the
policy's current weights are copied into vLLM's model, so vLLM samples from the policy being trained,
not from the checkpoint it was started from:

    policy weights -> (LoRA: base + scaling * B @ A, computed out of place; FSDP2: gathered full tensors;
                       FSDP1 shards and ZeRO-3 partitions: refused with the fix, policy_weights.py)
                   -> <vLLM's nn.Module in this process>.load_weights([(name, tensor), ...])
                   -> llm.reset_prefix_cache()
                   -> llm.generate(prompt_token_ids, SamplingParams(n=G, ...))
                   -> Rollout (same layout as the HF engine: G contiguous rows per prompt)

vLLM V1 specifics (what the V0-era version of this file got wrong):

- V1 runs its engine core in a separate process by default, where this process cannot reach the model;
  `llm.llm_engine.model_executor` only exists with the engine in process. The engine sets
  `VLLM_ENABLE_V1_MULTIPROCESSING=0` before building the `LLM` (as TRL's colocate mode does through the
  `external_launcher` backend); a user who forces it to 1 gets an error that says so, not a silent
  rollout from stale weights. The model is then `model_executor.driver_worker.worker.model_runner`
  `.get_model()` (`get_model` unwraps a CUDA-graph wrapper).
- The V0 fallback `collective_rpc("load_weights", ...)` named a method V1's GPU worker does not have.
- `SamplingParams(top_k=0)` disables top-k (V1 prefers 0 to the old -1).

LoRA: the adapter's contribution is added to each base weight out of place. Merging in place
(`merge_adapter()` ... `unmerge_adapter()`) changed the frozen base weights by rounding on every rollout,
and with LoRA those base weights ARE the reference policy (`disable_adapter()`); a merge done while the
adapter was disabled (the reference forward) would also have leaked the adapter into the reference.
With the adapter disabled, the base weights are what vLLM gets. DoRA and LoRA on embeddings are refused.

The engine is imported lazily: building it without vLLM raises an ImportError that says how to install
it. Log-probs for the loss are recomputed by the trainer's own forward. vLLM's own log-probs of the drawn
tokens (`logprobs_mode="processed_logprobs"`: under the distribution the token was drawn from, i.e. after
repetition penalty, temperature, min-p and top-k / top-p, renormalized over the kept tokens; vLLM has no
mode between that and the raw logits) come back as `Rollout.sampling_logp`, so the trainer logs the
mismatch (`sampling/kl`) and, with `algorithm.vllm_importance_sampling_correction=true`, corrects it
(grpo/loss.py). The trainer's log-probs are of softmax(logits / T) alone, so with top-p < 1,
top-k > 0, min-p > 0 or a repetition penalty, `sampling/kl` includes that gap even when the weights agree.

Several ranks: vLLM's `external_launcher` joins the running job and reads RANK, WORLD_SIZE and LOCAL_RANK;
`set_launcher_env` exports them from the process group (Lightning's launcher never sets RANK). Each rank
runs its own engine on its own prompts, so tensor parallelism across ranks is refused, and each rank's
engine is seeded with `seed + rank` (as TRL's colocate mode does). vLLM reseeds Python's, NumPy's and
torch's global generators with its seed when it starts; the trainer's generator states are put back
afterwards (`keeping_trainer_rng`), so starting the engine does not change the run's random stream.
(Checked against vLLM 0.32.0's source, the version pip resolves the extra to; never run: no GPU here.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import torch

from quark_lightning.config.typed import typed
from quark_lightning.infra.distributed import world_size
from quark_lightning.rollout.engine import Rollout
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.rollout.policy_weights import merged_policy_weights
from quark_lightning.rollout.rollout_settings import VLLMRolloutSettings

VLLM_MISSING = (
    "rollout=vllm needs the `vllm` package (CUDA GPUs). Fix: pip install -e '.[vllm]', or use rollout=hf"
)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(VLLM_MISSING)


IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
IN_PROCESS_NEEDED = (
    "rollout=vllm copies the policy's weights into vLLM's model in this process, but vLLM's engine core "
    f"runs in another process ({IN_PROCESS_ENV}={{value}}). Fix: unset {IN_PROCESS_ENV} or set it to 0"
)


def vllm_model(llm) -> torch.nn.Module:
    """vLLM V1's model module, reachable only with the engine core in this process."""
    executor = getattr(llm.llm_engine, "model_executor", None)
    if executor is None:
        raise RuntimeError(IN_PROCESS_NEEDED.format(value=os.environ.get(IN_PROCESS_ENV, "1 (default)")))
    worker = executor.driver_worker  # WorkerWrapperBase
    runner = getattr(worker, "worker", worker).model_runner  # GPUModelRunner
    return runner.get_model() if hasattr(runner, "get_model") else runner.model


def launcher_env(rank: int, world: int, local_rank: int) -> dict[str, str]:
    """What vLLM's `external_launcher` reads from the environment to join a running job as one rank."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank)}


def set_launcher_env() -> dict[str, str]:
    """Export this process's rank, world size and local rank from the running process group.

    torchrun exports all three; Lightning's own launcher (`trainer=ddp`, `python train.py`) exports
    LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT but never RANK, so vLLM's external launcher would
    fail with KeyError: 'RANK'. A value already set that disagrees with the process group is refused.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
    env = launcher_env(rank, world, local)
    for key, value in env.items():
        if os.environ.get(key, value) != value:
            raise RuntimeError(
                f"rollout=vllm: {key}={os.environ[key]} in the environment, but this process is {key.lower()} "
                f"{value} of the training job's process group. Fix: launch with torchrun or with Lightning's "
                "launcher alone, not a mix"
            )
        os.environ[key] = value
    return env


TENSOR_PARALLEL_REFUSED = (
    "rollout=vllm with several training ranks: each rank samples its own prompts with its own engine, but "
    "tensor_parallel_size={tp} would make ranks share one engine, which needs the same prompts on each. "
    "Fix: rollout.tensor_parallel_size=1"
)


@contextlib.contextmanager
def keeping_trainer_rng():
    """Python's, NumPy's and torch's (CPU and CUDA) global generator states, put back on exit: vLLM
    reseeds them all when its engine starts."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


class VLLMEngine:
    SETTINGS = VLLMRolloutSettings

    def __init__(self, **settings: Any):
        """The keys are `VLLMRolloutSettings`' (rollout/rollout_settings.py): the sampling keys of
        `HFGenerateEngine` (including `eos_token_ids`, `stop_strings`: extra stop ids beside the tokenizer's
        EOS, and strings that end a completion, kept in it as transformers does) and vLLM's own."""
        s = self.settings = typed(VLLMRolloutSettings, settings, "rollout")
        require_vllm()
        self.eos_token_ids = [int(i) for i in s.eos_token_ids]
        self.stop_strings = [str(t) for t in s.stop_strings]
        self.max_new_tokens = s.max_new_tokens
        self.max_prompt_length = s.max_prompt_length
        self.sampling_kwargs = dict(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or 0,  # 0 = off (V1 still accepts the old -1, but prefers 0)
            min_p=s.min_p or 0.0,
            repetition_penalty=s.repetition_penalty or 1.0,
            max_tokens=s.max_new_tokens,
            stop_token_ids=self.eos_token_ids or None,
            stop=self.stop_strings or None,
            include_stop_str_in_output=True,
        )
        self.llm_kwargs = dict(
            gpu_memory_utilization=s.gpu_memory_utilization,
            tensor_parallel_size=s.tensor_parallel_size,
            dtype=s.dtype,
            enforce_eager=s.enforce_eager,
            seed=s.seed,
            max_model_len=s.max_prompt_length + s.max_new_tokens,
        )
        self._encoder = HFGenerateEngine(max_new_tokens=s.max_new_tokens, max_prompt_length=s.max_prompt_length)
        self._llm = None

    # ------------------------------------------------------------------ vLLM side
    def llm(self, policy: torch.nn.Module):
        """The rank's vLLM instance, started on first use from the policy's checkpoint directory, with its
        engine core in this process (see the module docstring)."""
        if self._llm is None:
            # before vLLM reads its environment (some versions cache it once the engine starts)
            if os.environ.setdefault(IN_PROCESS_ENV, "0") != "0":
                raise RuntimeError(IN_PROCESS_NEEDED.format(value=os.environ[IN_PROCESS_ENV]))
            from vllm import LLM

            base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
            kwargs = dict(self.llm_kwargs, logprobs_mode="processed_logprobs")  # the sampling distribution
            if world_size() > 1:  # colocated: this process is one rank of the training job
                if kwargs["tensor_parallel_size"] != 1:
                    raise ValueError(TENSOR_PARALLEL_REFUSED.format(tp=kwargs["tensor_parallel_size"]))
                kwargs["distributed_executor_backend"] = "external_launcher"
                env = set_launcher_env()  # Lightning's launcher never sets RANK, which vLLM reads
                kwargs["seed"] = kwargs["seed"] + int(env["RANK"])  # ranks sample different answers
            with keeping_trainer_rng():
                self._llm = LLM(model=base.config._name_or_path, **kwargs)
        return self._llm

    @torch.no_grad()
    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Copy the policy's current weights into vLLM (every rank calls: FSDP2 gathers). The policy's own
        parameters are never modified (no in-place LoRA merge)."""
        weights = list(merged_policy_weights(policy))
        vllm_model(self._llm).load_weights(weights)
        self._llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    # ------------------------------------------------------------------ the interface
    @property
    def temperature(self) -> float | None:
        """The sampling temperature (the policy's token log-probs divide the logits by it)."""
        return self.sampling_kwargs.get("temperature")

    def generate(
        self, policy, tokenizer, prompts: Sequence[dict[str, Any]], num_generations: int, greedy: bool = False
    ) -> Rollout:
        from vllm import SamplingParams

        llm = self.llm(policy)
        self.sync_weights(policy)
        device = next(policy.parameters()).device
        enc = self._encoder.encode_prompts(tokenizer, prompts, "cpu")  # (B, P) left-padded
        token_prompts = [
            {"prompt_token_ids": ids[mask.bool()].tolist()}
            for ids, mask in zip(enc["input_ids"], enc["attention_mask"])
        ]
        kwargs = dict(self.sampling_kwargs, n=num_generations, logprobs=0)  # + the drawn token's log-prob
        if greedy:
            kwargs.update(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0)
        outputs = llm.generate(token_prompts, SamplingParams(**kwargs), use_tqdm=False)
        stop_ids = [tokenizer.eos_token_id, *self.eos_token_ids]
        samples = [o for out in outputs for o in out.outputs]
        rows = [self._completion(o, stop_ids) for o in samples]
        C = max(1, max(len(r) for r in rows))
        completion = torch.tensor([r + [tokenizer.pad_token_id] * (C - len(r)) for r in rows])  # (N, C)
        full = torch.cat([enc["input_ids"].repeat_interleave(num_generations, 0), completion], dim=1)
        enc = {k: v.to(device) for k, v in enc.items()}
        rollout = HFGenerateEngine.to_rollout(
            tokenizer, prompts, enc, full.to(device), num_generations, stop_ids, self.stop_strings
        )
        logps = None if greedy else sampled_logprobs(samples, rollout.completion_ids.size(1))
        if logps is not None:
            rollout.sampling_logp = logps.to(device) * rollout.completion_mask
        return rollout

    @staticmethod
    def _completion(output, stop_ids: Sequence[int]) -> list[int]:
        """vLLM's token ids; a stop (EOS, a stop id or a stop string) is made explicit with an EOS when the
        ids do not end in a stop id, so the completion mask ends there (after a stop string, to_rollout
        ends the mask at the string's last token and the added EOS is masked out)."""
        ids = list(output.token_ids)
        if output.finish_reason == "stop" and (not ids or ids[-1] not in stop_ids):
            ids.append(stop_ids[0])
        return ids


def sampled_logprobs(samples, width: int) -> torch.Tensor | None:
    """(N, width) vLLM's log-prob of each sampled token (`SamplingParams(logprobs=0)` returns the drawn
    token's), 0 after the completion; None when vLLM returned none."""
    out = torch.zeros(len(samples), width)
    for i, o in enumerate(samples):
        if not getattr(o, "logprobs", None):
            return None
        for t, (token, table) in enumerate(zip(o.token_ids[:width], o.logprobs)):
            out[i, t] = float(table[token].logprob)
    return out
