"""Two gloo ranks, where only rank 1's scorer fails under `on_failure: stop` (tests/matrix/test_rank_stop.py).

    python tests/scripts/rank_stop_run.py OUT_DIR MODEL_DIR

GRPO under Lightning DDP on 2 CPU processes (the scripted rollout engine of equivalence_run.py, the real
scoring, loss and strategy). The dimension `flaky` raises on rank 1 only. Each rank writes what stopped
it to OUT_DIR/rank{R}.txt (`finished` when nothing did); rank 0 waits for rank 1's file before it
returns from the exception, so both are written whatever the order of teardown.
"""

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from equivalence_run import BlockDataModule, ScriptedEngine  # noqa: E402

from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule  # noqa: E402
from quark_lightning.infra.errors import QuarkError  # noqa: E402
from quark_lightning.matrix import AlignmentMatrix, Dimension  # noqa: E402
from quark_lightning.models.loading import load_causal_lm  # noqa: E402
from quark_lightning.scorers.format import FormatScorer  # noqa: E402
from quark_lightning.scorers.interface import ScoreResult  # noqa: E402


class FailsOnRankOne:
    def score(self, prompts, completions):
        if dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError("the judge of rank 1 is down")
        return ScoreResult.from_lists([1.0] * len(completions), [[] for _ in completions])


class RecordStop(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_exception(self, trainer, pl_module, exception):
        write(self.out_dir, trainer.global_rank, f"{type(exception).__name__}: {exception}")
        other = os.path.join(self.out_dir, "rank1.txt")
        deadline = time.monotonic() + 120
        while trainer.global_rank == 0 and not os.path.exists(other) and time.monotonic() < deadline:
            time.sleep(0.2)


def write(out_dir: str, rank: int, text: str) -> None:
    path = os.path.join(out_dir, f"rank{rank}.txt")
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def main() -> None:
    out_dir, model_dir = sys.argv[1:3]
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    loaded = load_causal_lm(model_dir)
    matrix = AlignmentMatrix(
        [
            Dimension("format_rules", "format", FormatScorer(min_words=3, max_words=25)),
            Dimension("flaky", "fundamental", FailsOnRankOne(), on_failure={"policy": "stop"}),
        ]
    )
    dm = BlockDataModule(prompts_per_step=2, val_fraction=0.0)
    texts = [r["reference"] for r in dm.load() if r.get("reference")]
    module = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        matrix,
        GRPOConfig(num_generations=2, lr=1e-3, beta=0.0),
        ScriptedEngine(texts, max_new_tokens=16),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=out_dir,
        callbacks=[RecordStop(out_dir)],
    )
    try:
        trainer.fit(module, datamodule=dm)
    except QuarkError:
        sys.exit(3)
    write(out_dir, trainer.global_rank, "finished")


if __name__ == "__main__":
    main()
