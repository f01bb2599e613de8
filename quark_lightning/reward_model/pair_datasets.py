"""Preference pairs for the scalar reward model: the datasets it trains on, pair rewards, evaluation.

`PairDataset`: tokenized pairs (each side rendered by `ScalarRewardModel.encode`); a batch is one forward
for both sides. `FeaturePairDataset`: pairs over a frozen backbone's pooled features, computed once per
distinct (question, answer) text (`extract_features`: no grad, length-sorted batches), so training runs
the head alone on the cached features. `pair_rewards` scores a collated batch of either kind;
`evaluate_pairs` gives the `preference_metrics` (ties_loss.py) of a whole dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from quark_lightning.data.resumable import ResumableDataLoader, ShuffleSampler
from quark_lightning.reward_model.scalar_rm import ScalarRewardModel, pad_right
from quark_lightning.reward_model.ties_loss import PREFERENCE_CODES, preference_metrics


class PairDataset(Dataset):
    """Tokenized preference pairs: each item is (ids of a, ids of b, preference code +1 / −1 / 0)."""

    def __init__(self, model: ScalarRewardModel, pairs: Sequence[dict[str, Any]], max_length: int = 512):
        self.items = [
            (
                model.encode(p["messages"], p["response_a"], max_length),
                model.encode(p["messages"], p["response_b"], max_length),
                PREFERENCE_CODES[p["preference"]],
            )
            for p in pairs
        ]
        self.pad_id = model.tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]

    def collate(self, rows) -> dict[str, torch.Tensor]:
        """One forward for both sides: input_ids (2B, T) = [a_1..a_B, b_1..b_B], pref (B,)."""
        ids, mask = pad_right([r[0] for r in rows] + [r[1] for r in rows], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "pref": torch.tensor([r[2] for r in rows])}

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """Batches in order, or (shuffle) in a new seeded order each pass from a loader whose position
        inside the pass is saved in the checkpoint, so a resumed run takes exactly the batches the
        uninterrupted one would have (quark_lightning/data/resumable.py)."""
        if not shuffle:
            return DataLoader(self, batch_size=batch_size, collate_fn=self.collate)

        return ResumableDataLoader(
            self,
            batch_size=batch_size,
            sampler=ShuffleSampler(self, seed=seed),
            collate_fn=self.collate,
            generator=torch.Generator().manual_seed(seed),
        )


@torch.no_grad()
def extract_features(
    model: ScalarRewardModel, encoded: Sequence[Sequence[int]], batch_size: int = 16
) -> torch.Tensor:
    """Pooled backbone features (N, H) of token lists, in eval mode without grad, batched by length
    (sorted, so a batch pads to about its own length); row i belongs to encoded[i]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.zeros(len(encoded), model.head[0].in_features, dtype=model.head[0].weight.dtype)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_right([encoded[i] for i in rows], model.tokenizer.pad_token_id)
        out[rows] = model.features(ids.to(device), mask.to(device)).cpu()
    model.train(was_training)
    return out


class FeaturePairDataset(Dataset):
    """Preference pairs over a frozen backbone's cached features: each distinct (question, answer) text
    goes through the backbone once; an item is (row of a, row of b, preference code +1 / −1 / 0)."""

    def __init__(
        self,
        model: ScalarRewardModel,
        pairs: Sequence[dict[str, Any]],
        max_length: int = 512,
        batch_size: int = 16,
    ):
        import time

        if not model.backbone_frozen:
            raise ValueError(
                "FeaturePairDataset needs a frozen backbone (call model.freeze_backbone() first)"
            )
        rows: dict[tuple[int, ...], int] = {}
        self.items = []
        for p in pairs:
            a = tuple(model.encode(p["messages"], p["response_a"], max_length))
            b = tuple(model.encode(p["messages"], p["response_b"], max_length))
            self.items.append(
                (
                    rows.setdefault(a, len(rows)),
                    rows.setdefault(b, len(rows)),
                    PREFERENCE_CODES[p["preference"]],
                )
            )
        started = time.perf_counter()
        self.features = extract_features(model, list(rows), batch_size)  # (U, H)
        self.seconds = time.perf_counter() - started
        self.num_texts = len(rows)
        self.num_tokens = sum(len(t) for t in rows)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]

    def collate(self, rows) -> dict[str, torch.Tensor]:
        """features (2B, H) = [a_1..a_B, b_1..b_B], pref (B,)."""
        index = torch.tensor([r[0] for r in rows] + [r[1] for r in rows], dtype=torch.long)
        return {"features": self.features[index], "pref": torch.tensor([r[2] for r in rows])}

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        return PairDataset.loader(self, batch_size, shuffle, seed)


def pair_rewards(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_a (B,), r_b (B,)) of a collated pair batch (token ids, or a frozen backbone's cached features)."""
    if "features" in batch:
        rewards = model.head_scores(batch["features"])  # (2B,)
    else:
        rewards = model(batch["input_ids"], batch["attention_mask"])  # (2B,)
    b = batch["pref"].size(0)
    return rewards[:b], rewards[b:]


@torch.no_grad()
def evaluate_pairs(
    model: ScalarRewardModel,
    dataset: PairDataset | FeaturePairDataset,
    batch_size: int = 16,
    tie_threshold: float = 0.5,
) -> dict[str, float]:
    """preference_metrics over a whole dataset (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    r_a, r_b, pref = [], [], []
    for batch in dataset.loader(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        a, b = pair_rewards(model, batch)
        r_a.append(a.cpu())
        r_b.append(b.cpu())
        pref.append(batch["pref"].cpu())
    model.train(was_training)
    if not r_a:
        return preference_metrics(
            torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), tie_threshold
        )
    return preference_metrics(torch.cat(r_a), torch.cat(r_b), torch.cat(pref), tie_threshold)
