"""Rollout speed of the HF engine's decoding paths, A/B interleaved in one run.

    python benchmarks/rollout_speed.py [--sizes tiny small] [--prompts 4] [--G 8] [--max-new-tokens 64]
                                       [--repeats 5]

Variants (rollout/hf_generate.py): `generate` = transformers' `model.generate(num_return_sequences=G)`;
`fast, prefill xG` = our KV-cache loop with every completion prefilling its own copy of the prompt;
`fast` = our loop with one prefill per prompt shared by its G completions (the default). Each repeat
runs every variant once, in rotating order, on the same prompts; we report the median wall time and
completion tokens per second (EOS-terminated tokens only). The models are random-initialized, so few
completions stop early; `--eos-bias` raises the EOS logit to measure the early-stop path too.
Writes benchmarks/results/rollout_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` finds `benchmarks`

import torch  # noqa: E402

from benchmarks._models import bench_prompts, machine, md_table, model_dir, num_params  # noqa: E402
from quark_lightning.models.loading import load_causal_lm  # noqa: E402
from quark_lightning.rollout.hf_generate import HFGenerateEngine  # noqa: E402

VARIANTS = {
    "generate": dict(decode="generate"),
    "fast, prefill xG": dict(decode="fast", share_prefill=False),
    "fast": dict(decode="fast", share_prefill=True),
}


def time_variant(engine, model, tokenizer, prompts, G: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    rollout = engine.generate(model, tokenizer, prompts, G)
    return time.perf_counter() - t0, int(rollout.completion_mask.sum())


def bench_size(size: str, args) -> dict:
    loaded = load_causal_lm(model_dir(size))
    model, tok = loaded.model, loaded.tokenizer
    if args.eos_bias:
        with torch.no_grad():
            model.lm_head.weight[tok.eos_token_id] *= 0  # then the bias acts through the final norm scale
            model.lm_head.weight[tok.eos_token_id] += args.eos_bias * model.model.norm.weight
    prompts = bench_prompts(args.prompts)
    engines = {k: HFGenerateEngine(max_new_tokens=args.max_new_tokens, **v) for k, v in VARIANTS.items()}
    for engine in engines.values():  # warm-up
        engine.generate(model, tok, prompts[:1], 2)
    times: dict[str, list[float]] = {k: [] for k in engines}
    tokens: dict[str, list[int]] = {k: [] for k in engines}
    names = list(engines)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            torch.manual_seed(r)
            t, n = time_variant(engines[name], model, tok, prompts, args.G)
            times[name].append(t)
            tokens[name].append(n)
    base = statistics.median(times["generate"])
    rows = {}
    for name in names:
        med = statistics.median(times[name])
        rows[name] = {
            "median_s": med,
            "tokens_per_s": statistics.median(n / t for n, t in zip(tokens[name], times[name])),
            "mean_completion_tokens": statistics.mean(tokens[name]) / (args.prompts * args.G),
            "speedup_vs_generate": base / med,
            "times_s": times[name],
        }
    return {"params": num_params(model), "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eos-bias", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {size: bench_size(size, args) for size in args.sizes}
    meta = {k: v for k, v in vars(args).items() if k != "out"}
    meta["machine"] = machine()
    table = md_table(
        ["model", "variant", "median s / rollout", "completion tok/s", "mean length", "speed-up vs generate"],
        [
            [
                f"{size} ({r['params'] / 1e6:.1f}M)",
                name,
                f"{v['median_s']:.3f}",
                f"{v['tokens_per_s']:.0f}",
                f"{v['mean_completion_tokens']:.1f}",
                f"{v['speedup_vs_generate']:.2f}x",
            ]
            for size, r in results.items()
            for name, v in r["variants"].items()
        ],
    )
    header = (
        f"Rollout: {args.prompts} prompts x G={args.G}, max_new_tokens={args.max_new_tokens}, "
        f"eos_bias={args.eos_bias}, {args.repeats} interleaved repeats. Machine: {meta['machine']}."
    )
    os.makedirs(args.out, exist_ok=True)
    stem = "rollout_speed" + ("_eos" if args.eos_bias else "")
    Path(args.out, f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    Path(args.out, f"{stem}.md").write_text(header + "\n\n" + table + "\n")
    print(header + "\n\n" + table)


if __name__ == "__main__":
    main()
