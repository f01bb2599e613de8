"""A few GRPO steps (RFN + TADW) under one strategy; each rank writes what it computed, for comparison.

Used by tests/infra/test_distributed_equivalence.py:

    python tests/scripts/equivalence_run.py OUT_DIR STRATEGY DEVICES MODEL_DIR LOSS_TYPES [STEPS]

STRATEGY is `single` (one process), `ddp` or `fsdp2` (Lightning starts DEVICES processes, gloo on CPU).
LOSS_TYPES is a comma list; one fit per loss type, in this process. The global batch is GLOBAL_PROMPTS
prompts on every strategy: rank r of W gets the r-th block of GLOBAL_PROMPTS / W prompts of the same
global batch, so concatenating the ranks' rows in rank order gives the single-process rows.

The rollout engine is a test double: it returns fixed completions per (prompt id, sample index) instead of
sampling, because sampling depends on each rank's RNG stream. Everything after the rollout (scoring,
normalization, weighting, advantages, reference and policy log-probs, loss, gradients, optimizer) is the
real code under the real strategy.
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Sampler  # noqa: E402

from callbacks.reward_rescaling import ReferenceFrozenNormalization  # noqa: E402
from callbacks.weighting import TriFactorWeightingCallback  # noqa: E402
from quark_lightning.data.datamodule import PromptDataModule, collate_prompts  # noqa: E402
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule  # noqa: E402
from quark_lightning.infra.distributed import is_sharded  # noqa: E402
from quark_lightning.matrix import AlignmentMatrix, Dimension  # noqa: E402
from quark_lightning.models.loading import load_causal_lm  # noqa: E402
from quark_lightning.rollout.hf_generate import HFGenerateEngine  # noqa: E402
from quark_lightning.scorers.format import FormatScorer  # noqa: E402
from quark_lightning.scorers.rubric import RubricScorer  # noqa: E402
from quark_lightning.scorers.safety import DangerousAdviceScorer  # noqa: E402
from quark_lightning.shaping.reward_shaping import RewardShaping  # noqa: E402

GLOBAL_PROMPTS = 4
G = 4
MAX_NEW_TOKENS = 24
LOGGED = [
    "loss",
    "reward",
    "reward_std",
    "kl",
    "entropy",
    "grad_norm",
    "frac_reward_zero_std",
    "completions/mean_length",
    "completions/max_length",
    "num_tokens",
    "clip_ratio/region_mean",
]


def _stable_int(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


class ScriptedEngine(HFGenerateEngine):
    """Completion j of prompt p is a fixed slice of the bundled reference answers (varied length, EOS or
    truncated), so the scorers give varied rewards and every run sees the same completions."""

    def __init__(self, texts: list[str], **kwargs):
        super().__init__(**kwargs)
        self.texts = texts

    def completion_ids(self, tokenizer, prompt_id: str, j: int) -> list[int]:
        h = _stable_int(prompt_id, j)
        words = self.texts[h % len(self.texts)].split()
        start = (h // 7) % max(1, len(words) // 2)
        text = " ".join(words[start : start + 3 + (h // 13) % 30])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_new_tokens - 1]
        return ids if (h // 17) % 5 == 0 else ids + [tokenizer.eos_token_id]  # 1 in 5 truncated

    def generate(self, policy, tokenizer, prompts, num_generations, greedy=False):
        device = next(policy.parameters()).device
        enc = self.encode_prompts(tokenizer, prompts, device)
        rows = [self.completion_ids(tokenizer, p["id"], j) for p in prompts for j in range(num_generations)]
        C = max(len(r) for r in rows)
        completion = torch.tensor([r + [tokenizer.pad_token_id] * (C - len(r)) for r in rows], device=device)
        out = torch.cat([enc["input_ids"].repeat_interleave(num_generations, 0), completion], dim=1)
        return self.to_rollout(tokenizer, prompts, enc, out, num_generations)


class GlobalBlockSampler(Sampler):
    """Global batch s = perm[s*B:(s+1)*B] for every world size; rank r takes block r of it."""

    def __init__(self, n: int, per_rank: int, rank: int, world: int, seed: int = 0):
        self.perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        self.per_rank, self.rank, self.world = per_rank, rank, world

    def __iter__(self):
        B = self.per_rank * self.world
        for s in range(len(self.perm) // B):
            block = self.perm[s * B : (s + 1) * B]
            yield from block[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def __len__(self) -> int:
        return (len(self.perm) // (self.per_rank * self.world)) * self.per_rank


class BlockDataModule(PromptDataModule):
    def train_dataloader(self) -> DataLoader:
        sampler = GlobalBlockSampler(
            len(self.train_set), self.prompts_per_step, self.trainer.global_rank, self.trainer.world_size
        )
        return DataLoader(
            self.train_set, batch_size=self.prompts_per_step, sampler=sampler, collate_fn=collate_prompts
        )


def full_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded parameters (collective under FSDP2: every rank must call)."""
    out = {}
    for name, p in module.named_parameters():
        t = p.detach()
        out[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu().clone()
    return out


class Recorder(L.Callback):
    def __init__(self):
        self.steps = []
        self.final = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rec = pl_module.last_step
        metrics = {k: float(trainer.callback_metrics[k]) for k in LOGGED if k in trainer.callback_metrics}
        self.steps.append(
            {
                "prompt_ids": [p["id"] for p in batch],
                "advantages": rec.advantages.tolist(),
                "reward": rec.reward.tolist(),
                "metrics": metrics,
            }
        )

    def on_train_end(self, trainer, pl_module):
        self.final = {
            "rfn_mean": pl_module.shaping.normalizer.mean.tolist() if pl_module.shaping.normalizer is not None else [],
            "rfn_std": pl_module.shaping.normalizer.std.tolist() if pl_module.shaping.normalizer is not None else [],
            "weights": pl_module.shaping.weights.tolist(),
            "params": full_params(pl_module.policy),
            "sharded": is_sharded(pl_module.policy),
        }


def make_strategy(name: str):
    if name == "fsdp2":
        from quark_lightning.infra.strategies import FSDP2Strategy

        return FSDP2Strategy()
    return {"single": "auto", "ddp": "ddp"}[name]


def run_one(out_dir: str, strategy: str, devices: int, model_dir: str, variant: str, steps: int) -> None:
    """`variant`: a loss type, optionally `@batch` (scale_rewards=batch) or `@gdpo` (the gdpo aggregator)."""
    loss_type, _, option = variant.partition("@")
    aggregator = "gdpo" if option == "gdpo" else "rfn_tadw"
    scale = "batch" if option == "batch" else "group"
    L.seed_everything(0, verbose=False)
    loaded = load_causal_lm(model_dir)
    matrix = AlignmentMatrix(
        [
            Dimension(
                "format_rules", "format", FormatScorer(min_words=3, max_words=25), risk=1.0, target=0.9
            ),
            Dimension("expert_rubric", "expert", RubricScorer(), risk=2.0, target=0.5),
            Dimension("safety", "fundamental", DangerousAdviceScorer(), risk=3.0, target=1.0),
        ]
    )
    dm = BlockDataModule(prompts_per_step=GLOBAL_PROMPTS // devices, val_fraction=0.0)
    texts = [r["reference"] for r in dm.load() if r.get("reference")]
    module = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        matrix,
        GRPOConfig(
            num_generations=G, lr=1e-3, beta=0.04, loss_type=loss_type, max_grad_norm=1.0, scale_rewards=scale
        ),
        ScriptedEngine(texts, max_new_tokens=MAX_NEW_TOKENS),
        shaping=RewardShaping.with_defaults(matrix, aggregator, normalization={"min_count": 2}),
    )
    unified = [ReferenceFrozenNormalization(calibration_prompts=8), TriFactorWeightingCallback()]
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=make_strategy(strategy),
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=out_dir,
        callbacks=[*(unified if aggregator == "rfn_tadw" else []), recorder],
    )
    trainer.fit(module, datamodule=dm)
    rank = trainer.global_rank
    params = recorder.final.pop("params")
    if rank == 0:
        torch.save(params, os.path.join(out_dir, f"{variant}_params.pt"))
    with open(os.path.join(out_dir, f"{variant}_rank{rank}.json"), "w") as fh:
        json.dump({"steps": recorder.steps, "final": recorder.final}, fh)


def main() -> None:
    out_dir, strategy, devices, model_dir, loss_types = sys.argv[1:6]
    steps = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for loss_type in loss_types.split(","):
        run_one(out_dir, strategy, int(devices), model_dir, loss_type, steps)


if __name__ == "__main__":
    main()
