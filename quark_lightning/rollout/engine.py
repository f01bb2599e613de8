"""The rollout-engine interface: prompts -> G sampled completions each, as a `Rollout`.

GRPOModule, the RFN calibration and the closed-loop evaluation call `generate` and read `max_new_tokens` and
`temperature`, so any engine that implements them plugs in through `rollout=NAME` (conf/rollout/): `hf`
(Hugging Face model, CPU and GPU, rollout/hf_generate.py) or `vllm` (vLLM, GPU, optional extra,
rollout/vllm_engine.py). The end of this module is how a torch engine draws a token under the sampling
settings and what log-prob it keeps for it (`sample_next`, `token_logprobs`, `draw`).

Contract of `generate(policy, tokenizer, prompts, num_generations, greedy=False) -> Rollout`:
- the G completions of a prompt are contiguous rows (prompt i owns rows i*G .. i*G+G-1);
- `prompt_ids`/`prompt_mask` are left-padded, `completion_ids` right-padded with the pad token;
- `completion_mask` is 1 up to and including the first EOS; `truncated` marks rows without an EOS;
- a prompt longer than the engine's `max_prompt_length` keeps its last tokens (left truncation, as TRL:
  the generation header and the latest turn survive); `prompt_truncated` marks its rows;
- tensors are ordinary tensors (not inference tensors) on the policy's device, so they can enter autograd;
- the engine samples from the policy's current weights (an engine with its own copy syncs them first);
- `sampling_logp`, when the engine returns it, is what the sampler computed for the drawn tokens, so the
  trainer can measure and correct the mismatch (grpo/loss.py);
- each of `completions` is a `Completion`: the decoded text (a `str` to every scorer) that also says whether
  the engine cut it at `max_new_tokens`, which the text alone cannot tell (a cut can land on a full stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from quark_lightning.infra.precision import upcast


class Completion(str):
    """A completion's text that remembers whether the engine cut it at the completion cap (no EOS).

    It is a `str` wherever text is read (scorers, judges, reports); `scorers/completion.py` reads
    `truncated`. Plain strings (a reference answer, a response read from a file) have no such flag. The flag
    belongs to the rollout, not to saved state: pickled or copied, a Completion becomes its plain text, and
    state that is saved keeps `str(completion)` (`torch.load(weights_only=True)` refuses any str subclass,
    so a checkpoint holding one could not be read back; loop/metrics.py's examples are converted)."""

    __slots__ = ("truncated",)

    def __new__(cls, text: str, truncated: bool) -> Completion:
        obj = super().__new__(cls, text)
        obj.truncated = bool(truncated)
        return obj

    def __reduce__(self):  # saved and copied as plain text
        return (str, (str(self),))


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (N, P) left-padded, N = num_prompts * G
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C) 1 up to and including the first EOS
    completions: list[str]  # (N,) decoded text without special tokens, each a `Completion`
    prompts: list[dict[str, Any]]  # (N,) the prompt object of each completion (repeated G times)
    truncated: torch.Tensor  # (N,) bool, no EOS within max_new_tokens
    prompt_truncated: torch.Tensor  # (N,) bool, the prompt was longer than max_prompt_length (left-cut)
    # (N, C) the sampler's log-prob of each drawn token at its temperature, before top-k / top-p / min-p
    # (0 off the mask); None when the engine keeps none (grpo/loss.py compares it to the trainer's)
    sampling_logp: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # (N, P + C)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)  # (N, P + C)


@runtime_checkable
class RolloutEngine(Protocol):
    """What GRPOModule needs from a generation backend: `generate`, the completion cap (`dr_grpo` divides
    by it, as TRL does) and the sampling temperature (token log-probs are of softmax(logits / T))."""

    max_new_tokens: int

    @property
    def temperature(self) -> float: ...

    def generate(
        self,
        policy: torch.nn.Module,
        tokenizer: Any,
        prompts: Sequence[dict[str, Any]],
        num_generations: int,
        greedy: bool = False,
    ) -> Rollout: ...


def sampling_temperature(engine) -> float:
    """The engine's sampling temperature; 1.0 when it has none, or None / 0 (greedy: the plain softmax)."""
    t = getattr(engine, "temperature", 1.0)
    return float(t) if t else 1.0


def render_prompts(tokenizer, prompts: Sequence[dict[str, Any]]) -> list[str]:
    """Each prompt's chat messages through the tokenizer's chat template, ready for the answer."""
    return [
        tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def completion_mask_from_ids(
    completion_ids: torch.Tensor, eos_token_id: int | Sequence[int], stop_at: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (N, C) that is 1 up to and including the first EOS (any of the ids given) or the position
    `stop_at` (N,) where a stop string completed, whichever comes first; and whether each row has neither
    (it was cut at max_new_tokens)."""
    ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, Sequence) else [eos_token_id])
    is_eos = torch.isin(completion_ids, ids.to(completion_ids.device))  # (N, C)
    has_eos = is_eos.any(dim=1)
    C = completion_ids.size(1)
    first = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, C, dtype=torch.long))
    if stop_at is not None:
        first = torch.minimum(first, stop_at.to(first.device))
    positions = torch.arange(C, device=completion_ids.device).unsqueeze(0)  # (1, C)
    mask = (positions <= first.unsqueeze(1)).long()
    return mask, first >= C


def stop_string_positions(
    tokenizer: Any, completion_ids: torch.Tensor, stop_strings: Sequence[str]
) -> torch.Tensor:
    """(N,) the index of the token with which the earliest stop string is complete in each row (C when
    none occurs). The row's text is decoded once; the token is found by bisecting decoded prefixes."""
    N, C = completion_ids.shape
    out = torch.full((N,), C, dtype=torch.long)
    for i, row in enumerate(completion_ids.tolist()):
        text = tokenizer.decode(row, skip_special_tokens=False)
        ends = [text.find(s) + len(s) for s in stop_strings if s and s in text]
        if not ends:
            continue
        end = min(ends)
        lo, hi = 0, C - 1  # the first t with len(decode(row[: t + 1])) >= end
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tokenizer.decode(row[: mid + 1], skip_special_tokens=False)) >= end:
                hi = mid
            else:
                lo = mid + 1
        out[i] = lo
    return out


# ---------------------------------------------------------------- drawing a token (torch engines)
def sample_next(
    logits: torch.Tensor,  # (n, V)
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float | None = None,
    greedy: bool = False,
) -> torch.Tensor:
    """One token per row.  (n, V) -> (n,). Warpers in transformers' order: temperature, top-k, top-p, min-p."""
    if greedy:
        return logits.argmax(dim=-1)
    scores = upcast(logits) / temperature
    if top_k and top_k < scores.size(-1):
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (n, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)  # ascending: drop the low tail summing to <= 1 - top_p
        drop_sorted = cum <= (1.0 - top_p)
        drop_sorted[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    probs = scores.softmax(-1)  # (n, V)
    if min_p is not None:
        probs = probs.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, 0.0)
    return draw(probs)


def token_logprobs(logits: torch.Tensor, token: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The sampler's log-prob of each drawn token: log-softmax(logits / T) at it, before top-k / top-p /
    min-p (the distribution the trainer's token log-probs are of).  (n, V), (n,) -> (n,)"""
    scores = upcast(logits) / (temperature or 1.0)
    return (scores.gather(1, token.unsqueeze(1)) - torch.logsumexp(scores, dim=-1, keepdim=True)).squeeze(1)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row with probability proportional to `probs` (n, V), by inverse CDF.  -> (n,)

    One uniform per row and a search in the running sum: the same distribution as
    `torch.multinomial(probs, 1)`, which draws an exponential for every vocabulary entry (10-20 ms per
    decode step for 8 rows of a 49 K vocabulary on one CPU thread, against well under 1 ms here).
    A zero-probability entry is never drawn (its running sum equals the previous one).
    """
    cum = probs.cumsum(-1)  # (n, V)
    u = torch.rand(probs.size(0), 1, device=probs.device, dtype=cum.dtype) * cum[:, -1:]  # (n, 1)
    index = torch.searchsorted(cum, u, right=True)  # first entry whose running sum exceeds u
    over = index >= probs.size(-1)  # u rounded up to the total: take the most likely entry
    return torch.where(over, probs.argmax(-1, keepdim=True), index).squeeze(1)
