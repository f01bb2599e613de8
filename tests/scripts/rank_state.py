"""Run a few GRPO steps with RFN + TADW under a Lightning strategy; each rank dumps its state as JSON.

Used by tests/shaping/test_unified_optimization.py: `python tests/scripts/rank_state.py OUT_DIR STRATEGY DEVICES
MODEL_DIR [CKPT_IN] [MAX_STEPS]`. With `ddp` Lightning re-launches this script once per rank (gloo on CPU).
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from callbacks.reward_rescaling import ReferenceFrozenNormalization  # noqa: E402
from callbacks.weighting import TriFactorWeightingCallback  # noqa: E402
from quark_lightning.data.datamodule import PromptDataModule  # noqa: E402
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule  # noqa: E402
from quark_lightning.matrix import AlignmentMatrix, Dimension  # noqa: E402
from quark_lightning.models.loading import load_causal_lm  # noqa: E402
from quark_lightning.rollout.hf_generate import HFGenerateEngine  # noqa: E402
from quark_lightning.scorers.format import FormatScorer  # noqa: E402
from quark_lightning.scorers.rubric import RubricScorer  # noqa: E402
from quark_lightning.scorers.safety import DangerousAdviceScorer  # noqa: E402
from quark_lightning.shaping.reward_shaping import RewardShaping  # noqa: E402


class DumpState(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.at_start = None

    def on_train_start(self, trainer, pl_module):
        # runs after the RFN callback (callbacks run in order): calibrated or restored statistics
        self.at_start = self.state(pl_module)

    @staticmethod
    def state(pl_module):
        return {
            "rfn_mean": pl_module.shaping.normalizer.mean.tolist(),
            "rfn_std": pl_module.shaping.normalizer.std.tolist(),
            "weights": pl_module.shaping.weighting.weights.tolist(),
            "ema_score": pl_module.shaping.weighting.ema_score.tolist(),
            "tadw_steps": int(pl_module.shaping.weighting.steps),
        }

    def on_train_end(self, trainer, pl_module):
        out = {"start": self.at_start, "end": self.state(pl_module), "global_step": trainer.global_step}
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(out, fh)


def main():
    out_dir, strategy, devices, model_dir = sys.argv[1:5]
    ckpt_in = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    max_steps = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    torch.set_num_threads(1)
    L.seed_everything(0)
    loaded = load_causal_lm(model_dir)
    matrix = AlignmentMatrix(
        [
            Dimension(
                "format_rules", "format", FormatScorer(min_words=3, max_words=40), risk=1.0, target=0.9
            ),
            Dimension("expert_rubric", "expert", RubricScorer(), risk=2.0, target=0.5),
            Dimension("safety", "fundamental", DangerousAdviceScorer(), risk=3.0, target=1.0),
        ]
    )
    module = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        matrix,
        GRPOConfig(num_generations=4, lr=1e-3),
        HFGenerateEngine(max_new_tokens=12),
        shaping=RewardShaping.with_defaults(matrix, "rfn_tadw", normalization={"min_count": 2}),
    )
    callbacks = [
        ReferenceFrozenNormalization(calibration_prompts=8),
        TriFactorWeightingCallback(),
        DumpState(out_dir),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=int(devices),
        strategy=strategy,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=PromptDataModule(prompts_per_step=2, val_fraction=0.0), ckpt_path=ckpt_in)
    trainer.save_checkpoint(os.path.join(out_dir, "last.ckpt"))


if __name__ == "__main__":
    main()
