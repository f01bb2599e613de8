"""GRPO step time, throughput and peak memory: quark-lightning vs TRL's GRPOTrainer, A/B interleaved.

    pip install -e ".[bench]"            # TRL is only needed here (not by the tests)
    python benchmarks/grpo_vs_trl.py [--sizes tiny small] [--modes full lora] [--repeats 3] [--steps 4]

Same on both sides: the Llama-architecture models of benchmarks/_models.py (~2M and ~25M parameters),
the same bundled prompts in the same chat template, the same rule-based reward functions (format,
expert rubric, safety: one TRL reward function per matrix dimension, summed with weight 1 = our `sum`
aggregator = TRL's `sum_then_normalize`), G completions per prompt, max completion length, beta (k3 KL to
a frozen reference), loss type `grpo`, group scaling, AdamW lr 1e-5, clip 0.2, gradient-norm clip 1.0,
fp32 on CPU, no gradient checkpointing. `lora` = rank 8, alpha 16 on all linear layers (the reference is
the base with the adapter disabled on both sides).

Each measurement is one fresh subprocess that runs `--steps` optimizer steps (the first is a warm-up and
is dropped) of one trainer; subprocesses alternate ours/TRL (order rotating per repeat), so both see the
same machine load. Peak RSS is the subprocess's `ru_maxrss` (includes each library's import footprint).
Our step time splits into the `time/*` metrics GRPOModule logs; "overhead" is the rest of the step.
Writes benchmarks/results/grpo_vs_trl.{json,md}. Without TRL installed it says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` finds `benchmarks`

from benchmarks._models import bench_prompts, machine, md_table, model_dir  # noqa: E402

SPLIT_KEYS = ("time/generation", "time/reference", "time/policy", "time/scoring")


# ---------------------------------------------------------------------------------- shared setup
def make_dimensions():
    from quark_lightning.matrix import Dimension
    from quark_lightning.rewards.format import FormatScorer
    from quark_lightning.rewards.rubric import RubricScorer
    from quark_lightning.rewards.safety import SafetyScorer

    return [
        Dimension("format_rules", "format", FormatScorer(min_words=3, max_words=60)),
        Dimension("expert_rubric", "expert", RubricScorer()),
        Dimension("safety", "fundamental", SafetyScorer()),
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ---------------------------------------------------------------------------------- ours
def run_ours(args) -> dict:
    import lightning as L
    import torch

    from quark_lightning.data.datamodule import PromptDataModule
    from quark_lightning.matrix import AlignmentMatrix
    from quark_lightning.models.loading import apply_lora, load_causal_lm
    from quark_lightning.modules.grpo import GRPOConfig, GRPOModule
    from quark_lightning.rollout.hf_generate import HFGenerateEngine

    L.seed_everything(args.seed, verbose=False)
    loaded = load_causal_lm(model_dir(args.size))
    policy = apply_lora(loaded.model, 8, 16, 0.0, "all-linear") if args.mode == "lora" else loaded.model
    cfg = GRPOConfig(
        num_generations=args.G, loss_type="grpo", beta=args.beta, lr=1e-5, max_grad_norm=1.0, epsilon=0.2
    )
    module = GRPOModule(
        policy,
        loaded.tokenizer,
        AlignmentMatrix(make_dimensions()),
        cfg,
        HFGenerateEngine(max_new_tokens=args.max_new_tokens),
        aggregator="sum",
    )

    class StepTimer(L.Callback):
        def __init__(self):
            self.rows = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            m = trainer.callback_metrics
            row = {k: float(m[k]) for k in SPLIT_KEYS}
            row["step"] = time.perf_counter() - self.t0
            row["completion_tokens"] = float(pl_module.last_step_tokens)
            self.rows.append(row)

    # completion-token count of the step, for tokens/s (read by the timer)
    original = module.engine.generate

    def counting_generate(*a, **kw):
        rollout = original(*a, **kw)
        module.last_step_tokens = int(rollout.completion_mask.sum())
        return rollout

    module.engine.generate = counting_generate
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[timer],
    )
    datamodule = PromptDataModule(prompts_per_step=args.prompts, val_fraction=0.0)
    torch.set_num_threads(args.threads)
    trainer.fit(module, datamodule=datamodule)
    return {"steps": timer.rows[1:], "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------------------------- TRL
def trl_reward_functions() -> list:
    """One TRL reward function per matrix dimension; None where the dimension does not apply (NaN)."""
    from quark_lightning.matrix import AlignmentMatrix

    funcs = []
    for dim in make_dimensions():
        matrix = AlignmentMatrix([dim])

        def reward(prompts, completions, record, _matrix=matrix, **kwargs):
            texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            scores = _matrix.score([json.loads(r) for r in record], texts).scores[:, 0].tolist()
            return [None if math.isnan(s) else s for s in scores]

        reward.__name__ = dim.name
        funcs.append(reward)
    return funcs


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from quark_lightning.models.loading import load_causal_lm

    loaded = load_causal_lm(model_dir(args.size))
    records = bench_prompts(10_000)
    dataset = Dataset.from_list([{"prompt": r["messages"], "record": json.dumps(r)} for r in records])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.rows = []

        def on_step_begin(self, targs, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            self.rows.append({"step": time.perf_counter() - self.t0})

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and self.rows:
                n = logs["completions/mean_length"] * args.prompts * args.G
                self.rows[-1]["completion_tokens"] = float(n)

    peft_config = None
    if args.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    out_dir = tempfile.mkdtemp(prefix="trl_bench_")
    config = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.prompts * args.G,
        num_generations=args.G,
        max_completion_length=args.max_new_tokens,
        beta=args.beta,
        loss_type="grpo",
        scale_rewards="group",
        epsilon=0.2,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        seed=args.seed,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=loaded.model,
        reward_funcs=trl_reward_functions(),
        args=config,
        train_dataset=dataset,
        processing_class=loaded.tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    torch.set_num_threads(args.threads)
    trainer.train()
    return {"steps": timer.rows[1:], "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------------------------- orchestration
def worker_cmd(args, trainer: str, size: str, mode: str, out: str) -> list[str]:
    return [
        sys.executable, __file__, "--worker", trainer, "--size", size, "--mode", mode, "--json", out,
        "--steps", str(args.steps), "--prompts", str(args.prompts), "--G", str(args.G),
        "--max-new-tokens", str(args.max_new_tokens), "--beta", str(args.beta),
        "--threads", str(args.threads), "--seed", str(args.seed),
    ]  # fmt: skip


def run_cell(args, size: str, mode: str) -> dict:
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    order = ["ours", "trl"]
    for r in range(args.repeats):
        for trainer in order[r % 2 :] + order[: r % 2]:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
                out = fh.name
            proc = subprocess.run(worker_cmd(args, trainer, size, mode, out), capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{trainer} {size} {mode} failed:\n{proc.stderr[-3000:]}")
            runs[trainer].append(json.loads(Path(out).read_text()))
            print(f"  {size:<5} {mode:<4} repeat {r} {trainer:<4} done", flush=True)
    return {t: summarize(v) for t, v in runs.items()}


def summarize(runs: list[dict]) -> dict:
    steps = [s for run in runs for s in run["steps"]]
    step_times = [s["step"] for s in steps]
    out = {
        "median_step_s": statistics.median(step_times),
        "step_times_s": step_times,
        "completion_tokens_per_s": statistics.median(
            s["completion_tokens"] / s["step"] for s in steps if "completion_tokens" in s
        ),
        "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in runs),
    }
    if all(k in steps[0] for k in SPLIT_KEYS):
        split = {k.split("/")[1]: statistics.median(s[k] for s in steps) for k in SPLIT_KEYS}
        split["overhead"] = out["median_step_s"] - sum(split.values())
        out["split_s"] = split
    return out


def render(results: dict, meta: dict) -> str:
    rows, split_rows = [], []
    for cell, r in results.items():
        ours, trl = r["ours"], r["trl"]
        rows.append([
            cell, f"{ours['median_step_s']:.2f}", f"{trl['median_step_s']:.2f}",
            f"**{ours['median_step_s'] / trl['median_step_s']:.2f}x**",
            f"{ours['completion_tokens_per_s']:.0f}", f"{trl['completion_tokens_per_s']:.0f}",
            f"{ours['peak_rss_mb']:.0f}", f"{trl['peak_rss_mb']:.0f}",
            f"{ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x",
        ])  # fmt: skip
        sp, step = ours["split_s"], ours["median_step_s"]
        bound = sp["generation"] + sp["policy"]
        split_rows.append([
            cell, f"{step:.2f}", *(f"{sp[k]:.2f} ({100 * sp[k] / step:.0f}%)"
                                   for k in ("generation", "reference", "policy", "scoring", "overhead")),
            f"{bound:.2f}", f"{step / bound:.2f}x",
        ])  # fmt: skip
    head = (
        f"GRPO step, ours vs TRL {meta['trl_version']} GRPOTrainer: {meta['prompts']} prompts x G={meta['G']}, "
        f"max_new_tokens={meta['max_new_tokens']}, beta={meta['beta']}, loss grpo, fp32 CPU, "
        f"{meta['repeats']} interleaved subprocess runs per trainer x {meta['steps'] - 1} measured steps. "
        f"Machine: {meta['machine']}."
    )
    table = md_table(
        ["model / tuning", "ours s/step", "TRL s/step", "step ratio (ours/TRL)", "ours tok/s", "TRL tok/s",
         "ours peak RSS MB", "TRL peak RSS MB", "RSS ratio"], rows)  # fmt: skip
    split = md_table(
        ["model / tuning", "ours step s", "generation", "reference fwd", "policy fwd/bwd+opt", "scoring",
         "overhead", "lower bound (gen + fwd/bwd)", "step / bound"], split_rows)  # fmt: skip
    return f"{head}\n\n{table}\n\nOur step split (medians):\n\n{split}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--modes", nargs="+", default=["full", "lora"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run; the first is dropped")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--G", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_ours(args) if args.worker == "ours" else run_trl(args)
        Path(args.json).write_text(json.dumps(result))
        return
    if importlib.util.find_spec("trl") is None:
        print("TRL is not installed; this benchmark compares against it. Run: pip install -e '.[bench]'")
        return
    import torch
    import trl

    torch.set_num_threads(args.threads)  # as in the workers, so the machine line reports it
    for size in args.sizes:
        model_dir(size)  # build once, before the timed subprocesses
    results = {}
    for size in args.sizes:
        for mode in args.modes:
            results[f"{size} {mode}"] = run_cell(args, size, mode)
    meta = {k: v for k, v in vars(args).items() if k not in ("out", "worker", "size", "mode", "json")}
    meta.update(machine=machine(), trl_version=trl.__version__)
    text = render(results, meta)
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "grpo_vs_trl.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    Path(args.out, "grpo_vs_trl.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
