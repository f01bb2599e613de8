"""A learned reward model as a matrix dimension: any HF sequence-classification model with one label.

Loaded through the one real path, `AutoModelForSequenceClassification.from_pretrained(name_or_path)`
(a hub name or a local directory). The model is frozen and in eval mode; the GRPO module registers it
beside the policy so it moves to the right device, and it is never in the optimizer. Its tokenizer's
chat template renders (question, answer) when it has one; otherwise "question\\n\\nanswer".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from quark_lightning.models.loading import check_model_files, explain_load_error, is_damage, is_size_mismatch
from quark_lightning.scorers.interface import ScoreResult


class HFRewardModelScorer:
    def __init__(
        self, name_or_path: str, batch_size: int = 16, max_length: int = 512, trust_remote_code: bool = False
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # a damaged file of a local directory: its name and the fix, not a traceback from safetensors
        fix = (
            f"Fix: copy or save_pretrained the reward model into {name_or_path} again, or point the "
            "scorer's name_or_path at an intact copy."
        )
        check_model_files(name_or_path, "reward model", fix)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, num_labels=1, trust_remote_code=trust_remote_code
            )
        except Exception as err:  # noqa: BLE001 - explained below, else raised as it is
            if isinstance(err, (OSError, ValueError)) or is_damage(err) or is_size_mismatch(err):
                raise explain_load_error(name_or_path, err, "reward model") from err
            raise
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.model.requires_grad_(False).eval()
        self.batch_size, self.max_length = batch_size, max_length

    def _render(self, prompt: dict[str, Any], answer: str) -> str:
        messages = list(prompt.get("messages", [])) + [{"role": "assistant", "content": answer}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        question = "\n".join(m["content"] for m in prompt.get("messages", []))
        return f"{question}\n\n{answer}"

    @torch.no_grad()
    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> ScoreResult:
        texts = [self._render(p, c) for p, c in zip(prompts, completions, strict=True)]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(device)
            out.append(self.model(**enc).logits[:, 0].float().cpu())  # (b,)
        scores = torch.cat(out) if out else torch.zeros(0)
        return ScoreResult(scores=scores, findings=[[] for _ in texts])
