"""Supervised fine-tuning on (prompt, expert answer) pairs, with the loss on assistant tokens only.

Used by the demo as a short warm start so the policy writes answer-like text before RL. Each example is
rendered with the tokenizer's chat template; the prompt part (everything up to the generation prompt)
is masked out of the labels with -100, so only the answer and its end-of-turn marker are learned.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


def build_sft_example(tokenizer, record: dict[str, Any], max_length: int) -> dict[str, list[int]]:
    prompt_text = tokenizer.apply_chat_template(
        record["messages"], tokenize=False, add_generation_prompt=True
    )
    full_messages = list(record["messages"]) + [{"role": "assistant", "content": record["reference"]}]
    full_text = tokenizer.apply_chat_template(full_messages, tokenize=False)
    if not full_text.startswith(prompt_text):  # templates that re-render earlier turns differently
        full_text = prompt_text + record["reference"] + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"][:max_length]
    labels = [-100] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids) :]
    return {"input_ids": full_ids, "labels": labels}


class SFTDataset(Dataset):
    def __init__(self, tokenizer, records: list[dict[str, Any]], max_length: int = 512):
        usable = [r for r in records if isinstance(r.get("reference"), str) and r["reference"].strip()]
        if not usable:
            raise ValueError("supervised warm start: no prompt has a 'reference' answer to train on")
        self.examples = [build_sft_example(tokenizer, r, max_length) for r in usable]
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]

    def collate(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            attn[i, :n] = 1
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}

    def loader(self, batch_size: int, shuffle: bool = True) -> DataLoader:
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate)


class SFTModule(L.LightningModule):
    def __init__(
        self, policy: torch.nn.Module, lr: float = 1e-4, weight_decay: float = 0.0, warmup_steps: int = 0
    ):
        super().__init__()
        self.policy = policy
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps

    def on_train_start(self) -> None:
        self.policy.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.policy(**batch)  # HF shifts labels internally; -100 positions are ignored
        self.log("sft/loss", out.loss, prog_bar=True, on_step=True, batch_size=batch["input_ids"].size(0))
        return out.loss

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        warmup = self.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
