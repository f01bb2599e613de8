"""Rollout with vLLM (GPU; optional extra: `pip install -e ".[vllm]"`); implements `RolloutEngine`.

Colocated mode: every rank owns one `vllm.LLM` on its own GPU (tensor-parallel size 1 by default) and
samples the completions of its own prompts, as TRL's `vllm_mode="colocate"`. Before each `generate` the
policy's current weights are copied into vLLM's model (`load_weights`), so vLLM samples from the policy
being trained, not from the checkpoint it was started from:

    policy weights -> (LoRA: merged into the base names; FSDP2: gathered to full tensors)
                   -> llm_model.load_weights([(name, tensor), ...])
                   -> llm.generate(prompt_token_ids, SamplingParams(n=G, ...))
                   -> Rollout (same layout as the HF engine: G contiguous rows per prompt)

The engine is imported lazily: building it without vLLM raises an ImportError that says how to install
it. Not exercised in CI (no GPU, vLLM not installed there); tests skip where `vllm` is missing.
Log-probs for the loss are recomputed by the trainer's own forward (vLLM's sampling log-probs differ
slightly from the training forward, and no importance-sampling correction is applied here).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from quark_lightning.distributed import world_size
from quark_lightning.rollout.base import Rollout
from quark_lightning.rollout.hf_generate import HFGenerateEngine

VLLM_MISSING = (
    "rollout=vllm needs the `vllm` package (CUDA GPUs). Fix: pip install -e '.[vllm]', or use rollout=hf"
)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(VLLM_MISSING)


def policy_weights_for_vllm(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) pairs under the base model's parameter names.

    A PEFT policy is merged for the copy (adapter folded into the base weights, LoRA tensors skipped,
    `base_model.model.` and `.base_layer` removed from the names) and unmerged again by the caller.
    DTensors (FSDP2) are gathered with `full_tensor()`: a collective, so every rank must iterate.
    """
    for name, param in policy.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        tensor = param.detach()
        yield name, tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class VLLMEngine:
    def __init__(
        self,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float | None = None,
        repetition_penalty: float = 1.0,
        max_prompt_length: int = 256,
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        enforce_eager: bool = False,
        seed: int = 0,
    ):
        require_vllm()
        self.max_new_tokens = max_new_tokens
        self.max_prompt_length = max_prompt_length
        self.sampling_kwargs = dict(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k if top_k > 0 else -1,
            min_p=min_p or 0.0,
            repetition_penalty=repetition_penalty,
            max_tokens=max_new_tokens,
        )
        self.llm_kwargs = dict(
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            enforce_eager=enforce_eager,
            seed=seed,
            max_model_len=max_prompt_length + max_new_tokens,
        )
        self._encoder = HFGenerateEngine(max_new_tokens=max_new_tokens, max_prompt_length=max_prompt_length)
        self._llm = None

    # ------------------------------------------------------------------ vLLM side
    def llm(self, policy: torch.nn.Module):
        """The rank's vLLM instance, started on first use from the policy's checkpoint directory."""
        if self._llm is None:
            from vllm import LLM

            base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
            kwargs = dict(self.llm_kwargs)
            if world_size() > 1:  # colocated: this process is one rank of the training job
                kwargs["distributed_executor_backend"] = "external_launcher"
            self._llm = LLM(model=base.config._name_or_path, **kwargs)
        return self._llm

    def _vllm_model(self):
        engine = self._llm.llm_engine
        executor = getattr(engine, "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        runner = getattr(getattr(worker, "worker", worker), "model_runner", None)
        return getattr(runner, "model", None)

    @torch.no_grad()
    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Copy the policy's current weights into vLLM (every rank calls: FSDP2 gathers)."""
        merged = hasattr(policy, "merge_adapter")
        if merged:
            policy.merge_adapter()
        try:
            weights = list(policy_weights_for_vllm(policy))
            model = self._vllm_model()
            if model is not None:
                model.load_weights(weights)
            else:  # vLLM V1 engine core in another process: ask the workers to load them
                self._llm.collective_rpc("load_weights", kwargs={"weights": weights})
            if hasattr(self._llm, "reset_prefix_cache"):
                self._llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        finally:
            if merged:
                policy.unmerge_adapter()

    # ------------------------------------------------------------------ the interface
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
        kwargs = dict(self.sampling_kwargs, n=num_generations)
        if greedy:
            kwargs.update(temperature=0.0, top_p=1.0, top_k=-1, min_p=0.0)
        outputs = llm.generate(token_prompts, SamplingParams(**kwargs), use_tqdm=False)
        rows = [self._completion(o, tokenizer.eos_token_id) for out in outputs for o in out.outputs]
        C = max(1, max(len(r) for r in rows))
        completion = torch.tensor([r + [tokenizer.pad_token_id] * (C - len(r)) for r in rows])  # (N, C)
        full = torch.cat([enc["input_ids"].repeat_interleave(num_generations, 0), completion], dim=1)
        enc = {k: v.to(device) for k, v in enc.items()}
        return HFGenerateEngine.to_rollout(tokenizer, prompts, enc, full.to(device), num_generations)

    @staticmethod
    def _completion(output, eos_token_id: int) -> list[int]:
        """vLLM's token ids; an EOS stop is made explicit so the completion mask ends there."""
        ids = list(output.token_ids)
        if output.finish_reason == "stop" and (not ids or ids[-1] != eos_token_id):
            ids.append(eos_token_id)
        return ids
