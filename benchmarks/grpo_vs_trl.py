"""GRPO step time, throughput and peak memory: quark-lightning vs TRL's GRPOTrainer, A/B interleaved.

    pip install -e ".[bench]"            # TRL is only needed here (not by the tests)
    python benchmarks/grpo_vs_trl.py [--sizes tiny small] [--modes full lora] [--repeats 3] [--steps 4]
    # real scale: SmolLM2-135M-Instruct (134.5M params, vocab 49,152), resumable, time-boxed
    taskset -c 1 env OMP_NUM_THREADS=1 nohup python benchmarks/grpo_vs_trl.py --sizes smollm2 --G 4 \
        --prompts 2 --max-new-tokens 64 --steps 3 --repeats 2 --budget-min 25 > /tmp/bench.log 2>&1 &

Same on both sides: the Llama-architecture models of benchmarks/_models.py (~2M and ~25M parameters) or
SmolLM2-135M-Instruct (`smollm2`: a plain HF directory, see `resolve_model_dir`), the same bundled prompts in the same chat template, the same rule-based reward functions (format,
expert rubric, safety: one TRL reward function per matrix dimension, summed with weight 1 = our `sum`
aggregator = TRL's `sum_then_normalize`), G completions per prompt, max completion length, beta (k3 KL to
a frozen reference), loss type `grpo`, group scaling, AdamW lr 1e-5, clip 0.2, gradient-norm clip 1.0,
fp32 on CPU, no gradient checkpointing. `lora` = rank 8, alpha 16 on all linear layers (the reference is
the base with the adapter disabled on both sides).

Arms: `ours` (the default chunked LM-head log-probs), `trl`, and `ours_full_logits` (ours with
`logprob_chunk_size: null`, the previous path that upcasts the whole (N, C, V) logits to fp32: the
"before" of the peak-RSS comparison), `ours_fp32_rollout` (ours generating with the fp32 policy whatever
`--rollout-precision` says: the low-precision copy's before/after in the same run). Each measurement is one fresh subprocess that runs `--steps`
optimizer steps (the first is a warm-up and is dropped) of one arm; subprocesses alternate the arms
(order rotating per repeat), so all see the same machine load: on a shared machine read the ratios, not
the absolute times. Peak RSS is the subprocess's `ru_maxrss` (includes each library's import footprint
and the model load). Our step time splits into the `time/*` metrics GRPOModule logs; "overhead" is the
rest of the step. Every finished subprocess is cached under `--cache-dir` (keyed by the settings), so an
interrupted run resumes where it stopped (`--fresh` discards the cache); `--budget-min` stops launching
subprocesses once the next one would end past the budget, and the tables mark what is missing.
Writes benchmarks/results/grpo_vs_trl.{json,md}, one section per `--sizes` set (other sets already in
the JSON are kept). Without TRL installed it says so and exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
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

from benchmarks._models import CACHE, bench_prompts, machine, md_table, model_dir  # noqa: E402
from benchmarks._models import smollm2_dir as smollm2_default  # noqa: E402

SPLIT_KEYS = ("time/generation", "time/reference", "time/policy", "time/scoring")
ARMS = ("ours", "trl", "ours_full_logits", "ours_fp32_rollout")


def resolve_model_dir(size: str, smollm2_dir: str | None = None) -> str:
    """The one place that chooses a benchmark model's directory (loaded with `load_causal_lm`).

    tiny / small: built and cached by benchmarks/_models.py. smollm2: SmolLM2-135M-Instruct as a plain HF
    directory: `--smollm2-dir`, or by default model=smollm2's source (fetched and converted once).
    """
    if size == "smollm2":
        smollm2_dir = smollm2_dir or smollm2_default()
        if not os.path.isfile(os.path.join(smollm2_dir, "config.json")):
            raise SystemExit(f"--sizes smollm2: {smollm2_dir!r} is not an HF model directory (--smollm2-dir)")
        return smollm2_dir
    return model_dir(size)


# ---------------------------------------------------------------------------------- shared setup
def make_dimensions():
    from quark_lightning.matrix import Dimension
    from quark_lightning.scorers.format import FormatScorer
    from quark_lightning.scorers.rubric import RubricScorer
    from quark_lightning.scorers.safety import DangerousAdviceScorer

    return [
        Dimension("format_rules", "format", FormatScorer(min_words=3, max_words=60)),
        Dimension("expert_rubric", "expert", RubricScorer()),
        Dimension("safety", "fundamental", DangerousAdviceScorer()),
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ---------------------------------------------------------------------------------- ours
def run_ours(args) -> dict:
    import lightning as L
    import torch

    from quark_lightning.data.datamodule import PromptDataModule
    from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
    from quark_lightning.matrix import AlignmentMatrix
    from quark_lightning.models.loading import apply_lora, load_causal_lm
    from quark_lightning.rollout.hf_generate import HFGenerateEngine

    L.seed_everything(args.seed, verbose=False)
    loaded = load_causal_lm(resolve_model_dir(args.size, args.smollm2_dir))
    policy = apply_lora(loaded.model, 8, 16, 0.0, "all-linear") if args.mode == "lora" else loaded.model
    cfg = GRPOConfig(
        num_generations=args.G,
        loss_type="grpo",
        beta=args.beta,
        lr=1e-5,
        max_grad_norm=1.0,
        epsilon=0.2,
        logprob_chunk_size=None if args.worker == "ours_full_logits" else args.logprob_chunk_size,
    )
    module = GRPOModule(
        policy,
        loaded.tokenizer,
        AlignmentMatrix(make_dimensions()),
        cfg,
        HFGenerateEngine(
            max_new_tokens=args.max_new_tokens,
            precision="fp32" if args.worker == "ours_fp32_rollout" else args.rollout_precision,
        ),
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

    loaded = load_causal_lm(resolve_model_dir(args.size, args.smollm2_dir))
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
SETTINGS = (
    "steps", "prompts", "G", "max_new_tokens", "beta", "threads", "seed", "logprob_chunk_size", "rollout_precision"
)  # fmt: skip


def worker_cmd(args, arm: str, size: str, mode: str, out: str) -> list[str]:
    return [
        sys.executable, __file__, "--worker", arm, "--size", size, "--mode", mode, "--json", out,
        "--steps", str(args.steps), "--prompts", str(args.prompts), "--G", str(args.G),
        "--max-new-tokens", str(args.max_new_tokens), "--beta", str(args.beta),
        "--threads", str(args.threads), "--seed", str(args.seed),
        "--logprob-chunk-size", str(args.logprob_chunk_size), "--rollout-precision", args.rollout_precision,
        *(["--smollm2-dir", args.smollm2_dir] if args.smollm2_dir else []),
    ]  # fmt: skip


def run_dir(args, trl_version: str) -> Path:
    """Cache folder of this benchmark's subprocess results, keyed by every setting that changes them."""
    key = {k: getattr(args, k) for k in SETTINGS} | {"trl": trl_version, "smollm2": args.smollm2_dir}
    if key["rollout_precision"] == "fp32":
        del key["rollout_precision"]  # the default: the fp32 runs cached before the option keep their folder
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(args.cache_dir, f"grpo_vs_trl-{digest}")


class Budget:
    """Stops launching subprocesses once the next one would end past the budget; the next one is estimated
    as the longest finished run of the same arm (of any arm before that arm has run)."""

    def __init__(self, minutes: float | None):
        self.t0, self.limit = time.perf_counter(), None if minutes is None else 60.0 * minutes
        self.longest: dict[str, float] = {}

    def allows_another(self, arm: str) -> bool:
        estimate = self.longest.get(arm, max(self.longest.values(), default=0.0))
        return self.limit is None or time.perf_counter() - self.t0 + estimate <= self.limit

    def record(self, arm: str, seconds: float) -> None:
        self.longest[arm] = max(self.longest.get(arm, 0.0), seconds)


def run_all(args, cache: Path, budget: Budget) -> dict:
    """Every cell (size x mode) and arm, repeat by repeat (a budget cut leaves whole repeats of all)."""
    arms = [a for a in ARMS if a in args.arms]
    cells = [(size, mode) for size in args.sizes for mode in args.modes]
    runs: dict[str, dict[str, list[dict]]] = {f"{s} {m}": {a: [] for a in arms} for s, m in cells}
    for r in range(args.repeats):
        k = r % len(arms)
        for size, mode in cells:
            for arm in arms[k:] + arms[:k]:  # the order rotates per repeat
                label = f"  {size:<7} {mode:<4} repeat {r} {arm:<16}"
                path = cache / f"{size}_{mode}_{arm}_r{r}.json"
                if path.is_file():
                    runs[f"{size} {mode}"][arm].append(json.loads(path.read_text()))
                    print(f"{label} cached", flush=True)
                    continue
                if not budget.allows_another(arm):
                    print(f"{label} skipped (--budget-min)", flush=True)
                    continue
                t = time.perf_counter()
                tmp = path.with_suffix(".tmp")
                cmd = worker_cmd(args, arm, size, mode, str(tmp))
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{arm} {size} {mode} failed:\n{proc.stderr[-3000:]}")
                tmp.replace(path)  # only a finished subprocess counts as cached
                budget.record(arm, time.perf_counter() - t)
                runs[f"{size} {mode}"][arm].append(json.loads(path.read_text()))
                print(f"{label} done in {time.perf_counter() - t:.0f} s", flush=True)
    return {cell: {a: summarize(v) for a, v in by_arm.items() if v} for cell, by_arm in runs.items()}


def summarize(runs: list[dict]) -> dict:
    steps = [s for run in runs for s in run["steps"]]
    step_times = [s["step"] for s in steps]
    out = {
        "runs": len(runs),
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


def _ratio(a: dict | None, b: dict | None, key: str, bold: bool = False) -> str:
    if not a or not b:
        return "–"
    text = f"{a[key] / b[key]:.2f}x"
    return f"**{text}**" if bold else text


def _num(arm: dict | None, key: str, fmt: str) -> str:
    return format(arm[key], fmt) if arm else "–"


def _runs_text(results: dict, meta: dict) -> str:
    counts = {arm.get("runs", meta["repeats"]) for r in results.values() for arm in r.values()}
    lo, hi = min(counts, default=0), max(counts, default=0)
    text = f"{lo if lo == hi else f'{lo}-{hi}'} interleaved subprocess run(s) per arm"
    if hi < meta["repeats"]:
        text += f" (of {meta['repeats']} requested; the time budget, --budget-min, skipped the rest)"
    return text


def render(results: dict, meta: dict) -> str:
    rows, split_rows, fp32_rows = [], [], []
    for cell, r in results.items():
        ours, trl, old = r.get("ours"), r.get("trl"), r.get("ours_full_logits")
        rows.append([
            cell, _num(ours, "median_step_s", ".2f"), _num(trl, "median_step_s", ".2f"),
            _ratio(ours, trl, "median_step_s", bold=True),
            _num(ours, "completion_tokens_per_s", ".0f"), _num(trl, "completion_tokens_per_s", ".0f"),
            _num(ours, "peak_rss_mb", ".0f"), _num(trl, "peak_rss_mb", ".0f"),
            _ratio(ours, trl, "peak_rss_mb", bold=True),
            _num(old, "peak_rss_mb", ".0f"), _ratio(ours, old, "peak_rss_mb"),
            _ratio(old, trl, "median_step_s"),
        ])  # fmt: skip
        fp32 = r.get("ours_fp32_rollout")
        if fp32:
            fp32_rows.append([
                cell, _num(fp32, "median_step_s", ".2f"), _ratio(fp32, trl, "median_step_s"),
                _ratio(ours, fp32, "median_step_s", bold=True), _num(fp32, "peak_rss_mb", ".0f"),
                _ratio(fp32, trl, "peak_rss_mb"), _ratio(ours, fp32, "peak_rss_mb"),
            ])  # fmt: skip
        for label, arm in ((cell, ours), (f"{cell} (full logits)", old), (f"{cell} (fp32 rollout)", fp32)):
            if not arm or "split_s" not in arm:
                continue
            sp, step = arm["split_s"], arm["median_step_s"]
            bound = sp["generation"] + sp["policy"]
            split_rows.append([
                label, f"{step:.2f}", *(f"{sp[k]:.2f} ({100 * sp[k] / step:.0f}%)"
                                        for k in ("generation", "reference", "policy", "scoring", "overhead")),
                f"{bound:.2f}", f"{step / bound:.2f}x",
            ])  # fmt: skip
    head = (
        f"GRPO step, ours vs TRL {meta['trl_version']} GRPOTrainer: {meta['prompts']} prompts x G={meta['G']}, "
        f"max_new_tokens={meta['max_new_tokens']}, beta={meta['beta']}, loss grpo, fp32 CPU, "
        f"{_runs_text(results, meta)} x {meta['steps'] - 1} measured steps. Machine: {meta['machine']}."
    )
    if meta.get("rollout_precision", "fp32") != "fp32":
        head += (
            f" Ours: rollout.precision={meta['rollout_precision']} (a {meta['rollout_precision']} copy of the"
            " policy generates; training and reference log-probs stay fp32)."
        )
    if meta.get("logprob_chunk_size"):
        head += (
            f" Ours: chunked LM-head log-probs ({meta['logprob_chunk_size']} tokens per chunk); 'full logits' ="
            " ours with `logprob_chunk_size: null` (the previous path, the before of before/after)."
        )
    if meta.get("missing"):
        head += f" Missing (time budget): {', '.join(meta['missing'])}."
    if meta.get("note"):
        head += f" {meta['note']}"
    table = md_table(
        ["model / tuning", "ours s/step", "TRL s/step", "step ratio (ours/TRL)", "ours tok/s", "TRL tok/s",
         "ours peak RSS MB", "TRL peak RSS MB", "RSS ratio (ours/TRL)", "full-logits peak RSS MB (before)",
         "RSS after/before", "full-logits step ratio (/TRL)"], rows)  # fmt: skip
    split = md_table(
        ["model / tuning", "ours step s", "generation", "reference fwd", "policy fwd/bwd+opt", "scoring",
         "overhead", "lower bound (gen + fwd/bwd)", "step / bound"], split_rows)  # fmt: skip
    if fp32_rows:
        precision = meta.get("rollout_precision", "fp32")
        table += "\n\nOurs generating with the fp32 policy (arm `ours_fp32_rollout`, same run):\n\n" + md_table(
            ["model / tuning", "fp32-rollout s/step", "step ratio (/TRL)", f"{precision} / fp32 step",
             "fp32-rollout peak RSS MB", "RSS ratio (/TRL)", f"{precision} / fp32 RSS"], fp32_rows)  # fmt: skip
    return f"{head}\n\n{table}\n\nOur step split (medians):\n\n{split}\n"


def load_runs(path: Path) -> dict:
    """The sections already in the JSON, by their `--sizes` set (the older one-section format too)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if "runs" in data:
        return data["runs"]
    if "meta" in data:
        return {" ".join(data["meta"].get("sizes", ["?"])): data}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], help="tiny, small, smollm2")
    parser.add_argument("--modes", nargs="+", default=["full", "lora"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run; the first is dropped")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--G", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logprob-chunk-size", type=int, default=256, help="ours: tokens per LM-head chunk")
    parser.add_argument(
        "--rollout-precision",
        default="fp32",
        choices=["fp32", "bf16", "w8", "int8"],
        help="ours: rollout.precision, the generation copy's format (training stays fp32)",
    )
    parser.add_argument(
        "--smollm2-dir", default=None, help="SmolLM2-135M-Instruct HF directory (default: model=smollm2's)"
    )
    parser.add_argument("--budget-min", type=float, default=None, help="stop launching runs after this")
    parser.add_argument("--cache-dir", default=str(Path(CACHE) / "runs"), help="finished runs (resume)")
    parser.add_argument("--fresh", action="store_true", help="discard the cached runs of these settings")
    parser.add_argument("--note", default="", help="a sentence added to the Markdown section")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_trl(args) if args.worker == "trl" else run_ours(args)
        Path(args.json).write_text(json.dumps(result))
        return
    if importlib.util.find_spec("trl") is None:
        print("TRL is not installed; this benchmark compares against it. Run: pip install -e '.[bench]'")
        return
    import torch
    import trl

    torch.set_num_threads(args.threads)  # as in the workers, so the machine line reports it
    for size in args.sizes:
        resolve_model_dir(size, args.smollm2_dir)  # build once, before the timed subprocesses
    cache = run_dir(args, trl.__version__)
    if args.fresh and cache.is_dir():
        for f in cache.glob("*.json"):
            f.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    print(f"runs cached in {cache}", flush=True)
    budget = Budget(args.budget_min)
    results = run_all(args, cache, budget)
    missing = [f"{cell} {a}" for cell, r in results.items() for a in args.arms if a not in r]
    drop = ("out", "worker", "size", "mode", "json", "fresh", "cache_dir", "note")
    meta = {k: v for k, v in vars(args).items() if k not in drop}
    meta.update(machine=machine(), trl_version=trl.__version__, missing=missing, note=args.note)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(out / "grpo_vs_trl.json")
    section = " ".join(args.sizes) + (
        "" if args.rollout_precision == "fp32" else f", rollout {args.rollout_precision}"
    )
    runs[section] = {"meta": meta, "results": results}
    (out / "grpo_vs_trl.json").write_text(json.dumps({"runs": runs}, indent=2))
    sections = [f"## {name}\n\n{render(r['results'], r['meta'])}" for name, r in runs.items()]
    (out / "grpo_vs_trl.md").write_text("\n".join(sections))
    print(render(results, meta))


if __name__ == "__main__":
    main()
