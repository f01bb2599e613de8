"""Supervised fine-tuning on (prompt, expert answer) pairs, with the loss on assistant tokens only.

Used by the demo as a short warm start, and by the pipeline's foundational-SFT and expert
behaviour-cloning stages. Each example is rendered with the tokenizer's chat template; the prompt part
(everything up to the generation prompt) is masked out of the labels with -100, so only the answer and
its end-of-turn marker are learned. LoRA or full fine-tuning is decided by the caller (wrap the policy
with `apply_lora` first); only parameters with `requires_grad` are optimized.

Batching: length bucketing, not packing. Examples are shuffled, cut into pools of `pool_factor` batches,
each pool is sorted by length and cut into batches, and the batch order is shuffled again. Padding
shrinks without changing what is learned. We do not pack several examples into one row: with the
standard attention of HF causal LMs a packed row lets one example attend to the previous one unless a
block-diagonal mask (flash-attention varlen) is used, which CPU attention does not offer.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from quark_lightning.infra.errors import QuarkError
from quark_lightning.infra.optimizers import OptimizerFactory, SchedulerFactory, configure_optimizer


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
            raise QuarkError(
                "supervised fine-tuning: no example has a 'reference' answer to train on. Fix: add "
                "'reference' to the prompt rows, or choose other SFT sources"
            )
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

    def lengths(self) -> list[int]:
        return [len(e["input_ids"]) for e in self.examples]

    def loader(self, batch_size: int, shuffle: bool = True) -> DataLoader:
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate)

    def sampled_loader(self, sampler: Sampler[list[int]]) -> DataLoader:
        """Batches chosen by `sampler` (e.g. a LengthBucketBatchSampler)."""
        return DataLoader(self, batch_sampler=sampler, collate_fn=self.collate)


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the token slots in `batches` (index lists) that are padding under right padding."""
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / slots if slots else 0.0


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, sort within pools of `pool_factor` batches, shuffle batches.

    Every example appears exactly once per epoch; the epoch counter advances the seed, so epochs differ
    but a run is reproducible. `bucketing=False` skips the sort: plain shuffled batches, same seeding.
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        seed: int = 0,
        pool_factor: int = 8,
        shuffle: bool = True,
        bucketing: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths, self.batch_size = list(lengths), batch_size
        self.seed, self.pool_factor, self.shuffle = seed, max(1, pool_factor), shuffle
        self.bucketing = bucketing
        self.epoch = 0

    def batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        if not self.bucketing:
            return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        pool = self.batch_size * self.pool_factor
        batches: list[list[int]] = []
        for start in range(0, n, pool):
            chunk = sorted(order[start : start + pool], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self):
        batches = self.batches(self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class SFTModule(L.LightningModule):
    """`optimizer` (params -> optimizer) and `lr_scheduler` (optimizer -> scheduler) are the built
    `warmstart.optimizer` / `warmstart.lr_scheduler` nodes (infra/optimizers.py); None: AdamW(lr,
    weight_decay) and linear_warmup(warmup_steps), the same optimizer and schedule the nodes ship with."""

    def __init__(
        self,
        policy: torch.nn.Module,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ):
        super().__init__()
        self.policy = policy
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler

    def on_train_start(self) -> None:
        self.policy.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.policy(**batch)  # HF shifts labels internally; -100 positions are ignored
        self.log("sft/loss", out.loss, prog_bar=True, on_step=True, batch_size=batch["input_ids"].size(0))
        return out.loss

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        return configure_optimizer(
            params,
            self.optimizer_factory,
            self.lr_scheduler_factory,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
        )
