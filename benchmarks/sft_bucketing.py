"""SFT batching: length-bucketed batches vs plain shuffled batches, side by side in one run.

    python benchmarks/sft_bucketing.py [--batch-size 8] [--repeats 3]

Data: the expert-cloning stage's examples (bundled expert references + 64 worked calculator
explanations), tokenized with the tiny model's tokenizer; model: the demo's tiny Llama (158 K parameters).
For each repeat, one epoch of training steps (forward + backward + AdamW) runs with plain batches, then
one with bucketed batches (alternating which goes first), from the same initial weights. Reports the
padding fraction of the token slots, the median time per epoch and per real (non-padding) token, and the
ratios. Writes benchmarks/results/sft_bucketing.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from quark_lightning.cli.run import corpus_texts
from quark_lightning.data import BUNDLED_PROMPTS
from quark_lightning.data.datamodule import load_prompt_records
from quark_lightning.data.sft_sources import load_sft_examples
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.models.tiny import ensure_tiny_model
from quark_lightning.stages.sft import LengthBucketBatchSampler, SFTDataset, padding_fraction


def run_epoch(model: torch.nn.Module, dataset: SFTDataset, batches: list[list[int]]) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        inputs = dataset.collate([dataset[i] for i in batch])
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    records = load_prompt_records(str(BUNDLED_PROMPTS))
    examples, counts = load_sft_examples(
        {"expert_references": {}, "calculator_explanations": {"n": 64}}, records, [], "benchmark"
    )
    model_dir = ensure_tiny_model(corpus_texts(records))
    loaded = load_causal_lm(model_dir)
    dataset = SFTDataset(loaded.tokenizer, examples, max_length=args.max_length)
    lengths = dataset.lengths()
    real_tokens = sum(lengths)

    times: dict[str, list[float]] = {"plain": [], "bucketed": []}
    pads: dict[str, list[float]] = {"plain": [], "bucketed": []}
    for r in range(args.repeats):
        plans = {
            "plain": LengthBucketBatchSampler(lengths, args.batch_size, seed=r, bucketing=False).batches(0),
            "bucketed": LengthBucketBatchSampler(lengths, args.batch_size, seed=r).batches(0),
        }
        order = ["plain", "bucketed"] if r % 2 == 0 else ["bucketed", "plain"]
        for name in order:
            model = copy.deepcopy(loaded.model)
            times[name].append(run_epoch(model, dataset, plans[name]))
            pads[name].append(padding_fraction(lengths, plans[name]))

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "examples": counts,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "real_tokens_per_epoch": real_tokens,
        "padding_fraction": {k: statistics.mean(v) for k, v in pads.items()},
        "median_epoch_seconds": med,
        "real_tokens_per_second": {k: real_tokens / v for k, v in med.items()},
        "speedup_bucketed_vs_plain": med["plain"] / med["bucketed"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_bucketing.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        f"| {k} | {result['padding_fraction'][k]:.1%} | {med[k]:.2f} | {result['real_tokens_per_second'][k]:,.0f} |"
        for k in ("plain", "bucketed")
    ]
    table = "\n".join(
        [
            f"SFT epoch on {len(dataset)} expert-cloning examples ({real_tokens:,} real tokens), batch size "
            f"{args.batch_size}, tiny Llama, median of {args.repeats} interleaved repeats; {result['machine']}.",
            "",
            "| batching | padding of token slots | s / epoch | real tokens / s |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Bucketed vs plain: {result['speedup_bucketed_vs_plain']:.2f}x faster per epoch.",
        ]
    )
    (out / "sft_bucketing.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
