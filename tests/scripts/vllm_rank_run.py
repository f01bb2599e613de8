"""One 2-process Lightning launch (ddp, gloo, CPU) in which every rank builds the vLLM engine's `LLM`, with
vLLM replaced by a recorder: what environment and arguments would vLLM have been started with?

    python tests/scripts/vllm_rank_run.py OUT_DIR       # writes OUT_DIR/rank<R>.json

The environment is Lightning's own (its launcher starts the second process); only the `vllm` package is a
stand-in, because vLLM needs a GPU."""

from __future__ import annotations

import importlib.machinery
import json
import os
import random
import sys
import types
from pathlib import Path

import lightning as L
import numpy as np
import torch

OUT = Path(sys.argv[1])
SEEN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "VLLM_ENABLE_V1_MULTIPROCESSING")


class RecordingLLM:
    """Stands in for vllm.LLM: records what vLLM's external launcher would read, then stops."""

    def __init__(self, model: str, **kwargs):
        env = {k: os.environ.get(k) for k in SEEN_KEYS}
        rank = torch.distributed.get_rank()
        (OUT / f"rank{rank}.json").write_text(json.dumps({"env": env, "kwargs": kwargs, "model": model}))
        random.seed(kwargs["seed"])  # as vLLM's set_random_seed does when its worker starts
        np.random.seed(kwargs["seed"])
        torch.manual_seed(kwargs["seed"])


fake = types.ModuleType("vllm")
fake.__spec__ = importlib.machinery.ModuleSpec("vllm", loader=None)
fake.LLM = RecordingLLM
sys.modules["vllm"] = fake

from quark_lightning.rollout.vllm_engine import VLLMEngine  # noqa: E402


class Policy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
        self.config = types.SimpleNamespace(_name_or_path="/models/policy")


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.policy = Policy()
        self.engine = VLLMEngine(max_new_tokens=4)

    def training_step(self, batch, batch_idx):
        before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
        self.engine.llm(self.policy)  # where GRPOModule's first rollout builds it
        after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
        kept = (
            bool(torch.equal(before[0], after[0])) and before[1] == after[1] and (before[2] == after[2]).all()
        )
        rank = torch.distributed.get_rank()
        seen = json.loads((OUT / f"rank{rank}.json").read_text())
        (OUT / f"rank{rank}.json").write_text(json.dumps(dict(seen, trainer_rng_kept=bool(kept))))
        return self.policy.linear(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), data)
