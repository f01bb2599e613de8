"""A judge model in this process: any HF causal LM (hub name or local directory), greedy by default.

The model is loaded once per process (every scorer sharing the `judge` config shares it), on the CPU.
Inside training the GRPO module registers it beside the policy as a frozen module (matrix.py
`torch_modules`), so Lightning moves it to each rank's device and the model summary counts it as
non-trainable; generation runs on whatever device its weights are on. Outside training (the scoring
CLI, evaluate.py) it stays on the CPU unless the caller moves `judge.model`.

Each conversation is rendered with the tokenizer's chat template (`add_generation_prompt=True`), as
`transformers serve` renders it, and decoded with `skip_special_tokens=True`, so on the same model a
greedy local judge and a greedy server give the same replies (tests/judges/test_judges.py checks it).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from quark_lightning.infra.errors import ConfigError
from quark_lightning.judges.client import Judge, JudgeReply, Messages
from quark_lightning.judges.settings import JudgeConfig
from quark_lightning.models.loading import load_causal_lm


def directory_fingerprint(path: str) -> str:
    """Names, sizes and modification times of a model directory's files (hub names: empty)."""
    root = Path(path)
    if not root.is_dir():
        return ""
    stats = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in root.iterdir() if p.is_file())
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:16]


class LocalJudge(Judge):
    def __init__(self, config: JudgeConfig):
        super().__init__(config)
        if not config.model:
            raise ConfigError(
                "judge.model: judge=local needs a causal LM (a hub name or a local directory). "
                "Fix: judge.model=<dir>, or judge=openai judge.base_url=... judge.model=... for a server."
            )

        loaded = load_causal_lm(config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
        self.model = loaded.model.requires_grad_(False).eval()
        # the files as they were loaded (computed once, not on every call)
        self._identity = f"{config.model}@{directory_fingerprint(config.model)}"
        self.tokenizer = loaded.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def identity(self) -> str | None:
        """A local directory's judge is keyed by its files too: retrained weights under the same path are a
        different judge, and must not be answered from the cache."""
        return self._identity

    def generation_config(self):
        gen = copy.deepcopy(self.model.generation_config)
        gen.max_new_tokens = self.config.max_tokens
        gen.do_sample = self.config.temperature > 0
        if gen.do_sample:
            gen.temperature = self.config.temperature
        gen.pad_token_id = self.tokenizer.pad_token_id
        return gen

    @torch.no_grad()
    def _generate(self, conversations: Sequence[Messages]) -> list[str]:
        device = next(self.model.parameters()).device
        encoded = [
            self.tokenizer.apply_chat_template(
                list(c), add_generation_prompt=True, tokenize=True, return_dict=True
            )
            for c in conversations
        ]
        batch = self.tokenizer.pad(
            [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in encoded],
            return_tensors="pt",
        ).to(device)  # (B, T) left-padded
        ids = self.model.generate(**batch, generation_config=self.generation_config())  # (B, T + new)
        new = ids[:, batch["input_ids"].shape[1] :]  # (B, new)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _send(self, conversations: Sequence[Messages]) -> list[JudgeReply]:
        out: list[JudgeReply] = []
        for start in range(0, len(conversations), self.config.batch_size):
            chunk = conversations[start : start + self.config.batch_size]
            self._count(requests=len(chunk))
            out += [JudgeReply(text) for text in self._generate(chunk)]
        return out
