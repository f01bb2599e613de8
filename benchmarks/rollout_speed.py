"""Rollout speed of the HF engine's decoding paths against the memory-bandwidth floor, A/B interleaved.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/rollout_speed.py [--sizes tiny small smollm2]
        [--smollm2-path DIR (default: model=smollm2)] [--step-rows 8] [--step-tokens 32] [--rollout-sizes tiny small]
        [--prompts 4] [--G 8] [--max-new-tokens 64] [--repeats 3] [--clock cpu|wall] [--compile]

Part 1, the decode step against its floor. A decode step reads every weight once, so it cannot beat
floor = (fp32 weight bytes read per step) / (read bandwidth of this machine). The bandwidth is measured
in the same run, between the decode measurements (again in every repeat): `.sum()` and a matrix-vector
product over a 1 GiB fp32 buffer (far beyond the caches), median of the repeats, the faster of the two,
at the torch thread count the decode runs with (and at 1 thread when that differs). Weight bytes: every
parameter once (tied embeddings: the LM head reads the whole matrix; an untied input embedding reads only
its rows and is left out; the KV cache is not counted). ms per decode step = (rollout of `--step-tokens`
new tokens - rollout of 1) / (step-tokens - 1), `--step-rows` rows (1 prompt x G), EOS disabled so every
variant runs the same number of steps. Timed in CPU seconds of this process by default (`--clock cpu`;
the benchmark runs one torch thread): on a core time-shared with other jobs, wall time counts their slices.

Part 2, whole rollouts: `--prompts` prompts x G completions, `--max-new-tokens`, the real EOS; median wall
time and completion tokens per second (EOS-terminated tokens only).

Variants: `generate` = transformers' `model.generate(num_return_sequences=G)`; `fast (before)` = the decode
loop of commit 45f6bd8, kept here verbatim (the KV cache and the attention mask re-concatenated every
step, `torch.multinomial`); `fast` = the engine's loop now (rollout-sized KV buffers written in place, a
preallocated mask, inverse-CDF draws); `fast, prefill xG` = the same without the shared prefill;
`fast + prepack` = `rollout.prepack_weights: true` (the decode's fp32 CPU linear layers on weights packed
once per rollout by MKL, `prepacked_linears`); `fast + compile` (only with `--compile`: inductor needs
minutes on one thread, reported apart as the first rollout's extra wall time) = the decode step under
`torch.compile` with a StaticCache, the record of a try that did not pay; `fast, bf16 copy (plain)` = the
bf16 copy before its linears were packed and its attention upcast (`F.linear` on bf16 weights, bf16 SDPA);
`fast, bf16 copy`, `fast, int8
copy` and `fast, w8 copy` = `rollout.precision: bf16 | int8 | w8` (rollout/low_precision.py: the rollout
samples with a copy of the policy in that format, refreshed once per rollout, so the refresh cancels out of
the per-step figure; its "own floor" counts the copy's bytes: 1 byte a weight for int8 and w8 linears). Each repeat runs every variant
once, in rotating order, on the same prompts. Also checked: each variant's greedy completions equal
`generate`'s token for token (4 prompts x G=2, `--step-tokens` tokens). The random-init `tiny`/`small`
models seldom stop early; `--eos-bias` raises the EOS logit to measure the early-stop path too.
Writes benchmarks/results/rollout_speed.{json,md} (rollout_speed_eos.* with --eos-bias).
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

from benchmarks._models import bench_prompts, machine, md_table, model_dir, num_params, smollm2_dir  # noqa: E402
from quark_lightning.models.loading import load_causal_lm  # noqa: E402
from quark_lightning.rollout.hf_generate import CACHE_KWARG, HFGenerateEngine, sample_next  # noqa: E402
from quark_lightning.rollout.low_precision import RolloutCopy  # noqa: E402

BANDWIDTH_BYTES = 1 << 30
# The decode step and the bandwidth are timed in CPU seconds of this process (one torch thread): on a
# machine whose core is time-shared with other jobs, wall time counts their slices too. `--clock wall`
# times wall seconds instead. Whole rollouts (part 2) are always wall time.
CLOCK = time.process_time


# ---------------------------------------------------------------------- the decode loop before (verbatim)
def sample_next_before(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=None, greedy=False):
    if greedy:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k and top_k < scores.size(-1):
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cum <= (1.0 - top_p)
        drop_sorted[:, -1] = False
        scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    probs = scores.softmax(-1)
    if min_p is not None:
        probs = probs.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, 0.0)
    return torch.multinomial(probs, 1).squeeze(1)


class BeforeEngine(HFGenerateEngine):
    """The engine with the decode loop of the previous commit (45f6bd8), for the before/after rows."""

    def _decode_fast(self, policy, tokenizer, enc, num_generations: int, greedy: bool):
        return self._decode_before(policy, tokenizer, enc, num_generations, greedy), None

    def _decode_before(self, policy, tokenizer, enc, num_generations: int, greedy: bool) -> torch.Tensor:
        ids, mask = enc["input_ids"], enc["attention_mask"]
        G, eos, pad = num_generations, tokenizer.eos_token_id, tokenizer.pad_token_id
        if not self.share_prefill:
            ids, mask, G = ids.repeat_interleave(G, dim=0), mask.repeat_interleave(G, dim=0), 1
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = policy(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        if G > 1:
            cache.batch_repeat_interleave(G)
        logits = out.logits[:, -1].repeat_interleave(G, dim=0)
        mask = mask.repeat_interleave(G, dim=0)
        last_pos = positions[:, -1:].repeat_interleave(G, dim=0)
        N = ids.size(0) * G
        result = torch.full((N, self.max_new_tokens), pad, dtype=ids.dtype, device=ids.device)
        rows = torch.arange(N, device=ids.device)
        warp = {k: self.sampling[k] for k in ("temperature", "top_k", "top_p")}
        steps = 0
        for step in range(self.max_new_tokens):
            token = sample_next_before(logits, **warp, min_p=self.sampling.get("min_p"), greedy=greedy)
            result[rows, step] = token
            steps = step + 1
            alive = token != eos
            if step + 1 == self.max_new_tokens or not bool(alive.any()):
                break
            if not bool(alive.all()):
                keep = alive.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, token, mask, last_pos = rows[keep], token[keep], mask[keep], last_pos[keep]
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            last_pos = last_pos + 1
            out = policy(
                input_ids=token.unsqueeze(1),
                attention_mask=mask,
                position_ids=last_pos,
                use_cache=True,
                **{CACHE_KWARG: cache},
            )
            logits = out.logits[:, -1]
        return result[:, :steps]


class CompiledEngine(HFGenerateEngine):
    """The decode step under `torch.compile` (inductor, static shapes), tried and not adopted: a
    transformers StaticCache (fixed shapes, reused across rollouts so the guards hold), all N rows to the
    end, prefill of every copy of the prompt (eager). Only for `--compile`."""

    caches: dict = {}
    steps: dict = {}

    def _decode_fast(self, policy, tokenizer, enc, num_generations: int, greedy: bool):
        return self._decode_compiled(policy, tokenizer, enc, num_generations, greedy), None

    def _decode_compiled(self, policy, tokenizer, enc, num_generations: int, greedy: bool) -> torch.Tensor:
        from transformers import StaticCache

        G, eos, pad, C = num_generations, tokenizer.eos_token_id, tokenizer.pad_token_id, self.max_new_tokens
        ids, mask = enc["input_ids"].repeat_interleave(G, 0), enc["attention_mask"].repeat_interleave(G, 0)
        (N, P), key = ids.shape, (id(policy), *ids.shape, C)
        cache = self.caches.setdefault(key, StaticCache(config=policy.config, max_cache_len=P + C))
        cache.reset()
        step_fn = self.steps.setdefault(id(policy), torch.compile(policy.forward, dynamic=False))
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = policy(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{CACHE_KWARG: cache},
        )
        logits, last_pos = out.logits[:, -1], positions[:, -1:].clone()
        attn = mask.new_ones(N, P + C)
        attn[:, :P] = mask
        result = torch.full((N, C), pad, dtype=ids.dtype)
        done = torch.zeros(N, dtype=torch.bool)
        warp = {k: self.sampling[k] for k in ("temperature", "top_k", "top_p")}
        steps = 0
        for step in range(C):
            token = sample_next(logits, **warp, min_p=self.sampling.get("min_p"), greedy=greedy)
            result[:, step] = token
            done |= token == eos
            steps = step + 1
            if steps == C or bool(done.all()):
                break
            last_pos += 1
            out = step_fn(
                input_ids=token.unsqueeze(1),
                attention_mask=attn,
                position_ids=last_pos,
                use_cache=True,
                **{CACHE_KWARG: cache},
            )
            logits = out.logits[:, -1]
        return result[:, :steps]


def make_engine(name: str, **kwargs) -> HFGenerateEngine:
    return {
        "generate": lambda: HFGenerateEngine(decode="generate", **kwargs),
        "fast (before)": lambda: BeforeEngine(decode="fast", **kwargs),
        "fast, prefill xG": lambda: HFGenerateEngine(decode="fast", share_prefill=False, **kwargs),
        "fast": lambda: HFGenerateEngine(decode="fast", **kwargs),
        "fast + prepack": lambda: HFGenerateEngine(decode="fast", prepack_weights=True, **kwargs),
        "fast + compile": lambda: CompiledEngine(decode="fast", **kwargs),
        "fast, bf16 copy (plain)": lambda: plain_bf16_engine(**kwargs),
        "fast, bf16 copy": lambda: HFGenerateEngine(decode="fast", precision="bf16", **kwargs),
        "fast, int8 copy": lambda: HFGenerateEngine(decode="fast", precision="int8", **kwargs),
        "fast, w8 copy": lambda: HFGenerateEngine(decode="fast", precision="w8", **kwargs),
    }[name]()


def plain_bf16_engine(**kwargs) -> HFGenerateEngine:
    """The bf16 copy as it was before issue 26's packing: `F.linear` on plain bf16 weights, bf16 attention."""
    engine = HFGenerateEngine(decode="fast", precision="bf16", **kwargs)
    engine.rollout_copy = RolloutCopy("bf16", pack=False, attention_fp32=False)
    return engine


def copy_weight_bytes(engine, model) -> int:
    """Bytes one decode step reads from the weights of what samples: the policy, or its rollout copy
    (int8 linears 1 byte a weight, bf16 2, the rest as stored; tied weights once)."""
    copy = getattr(engine, "rollout_copy", None)
    if copy is None or copy.model is None:
        return weight_bytes_per_step(model)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from quark_lightning.rollout.low_precision import Int8WeightLinear, PackedBf16Linear

    total = sum(p.numel() * p.element_size() for p in copy.model.parameters())
    total += sum(2 * m.out_features * m.in_features for m in copy.model.modules() if isinstance(m, PackedBf16Linear))
    total += sum(m.weight().numel() for m in copy.model.modules() if isinstance(m, DynamicLinear))
    total += sum(m.weight_int8.numel() for m in copy.model.modules() if isinstance(m, Int8WeightLinear))
    emb, head = copy.model.get_input_embeddings(), copy.model.get_output_embeddings()
    if isinstance(head, (DynamicLinear, Int8WeightLinear, PackedBf16Linear)):  # the head reads its own copy
        total -= emb.weight.numel() * emb.weight.element_size()
    return total


class NoEOS:
    """The tokenizer with an EOS id no model can emit: every rollout runs its full number of steps."""

    eos_token_id = 1 << 40

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


# ---------------------------------------------------------------------- the floor
def read_bandwidth(buf: torch.Tensor, threads: int, repeats: int = 5) -> dict[str, float]:
    """GB/s of `.sum()` and of a matrix-vector product over `buf`, median of `repeats`, at `threads`."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    mat, vec = buf.view(-1, 4096), torch.ones(4096)
    times: dict[str, list[float]] = {"sum": [], "matvec": []}
    try:
        for _ in range(repeats):
            for name, fn in (("sum", buf.sum), ("matvec", lambda: mat @ vec)):
                t0 = CLOCK()
                fn()
                times[name].append(CLOCK() - t0)
    finally:
        torch.set_num_threads(before)
    return {k: buf.numel() * buf.element_size() / statistics.median(v) / 1e9 for k, v in times.items()}


def weight_bytes_per_step(model) -> int:
    """Bytes of the weights one decode step reads: every parameter once, less an untied input embedding."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights counted once
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb is not head:
        total -= emb.numel() * emb.element_size()
    return total


# ---------------------------------------------------------------------- measurements
def timed(engine, model, tokenizer, prompts, G: int, clock=None) -> tuple[float, int]:
    clock = clock or CLOCK
    t0 = clock()
    rollout = engine.generate(model, tokenizer, prompts, G)
    return clock() - t0, int(rollout.completion_mask.sum())


def rotate(names: list[str], r: int) -> list[str]:
    return names[r % len(names) :] + names[: r % len(names)]


def load(size: str, args):
    loaded = load_causal_lm((args.smollm2_path or smollm2_dir()) if size == "smollm2" else model_dir(size))
    model, tok = loaded.model, loaded.tokenizer
    if args.eos_bias:
        with torch.no_grad():
            model.lm_head.weight[tok.eos_token_id] *= 0  # then the bias acts through the final norm scale
            model.lm_head.weight[tok.eos_token_id] += args.eos_bias * model.model.norm.weight
    return model, tok


def bench_steps(model, tok, names: list[str], args, buf) -> dict:
    """ms per decode step for `step_rows` rows, and the bandwidth measured between the variants' runs."""
    prompts, G, T = bench_prompts(1), args.step_rows, args.step_tokens
    no_eos = NoEOS(tok)
    engines = {n: (make_engine(n, max_new_tokens=1), make_engine(n, max_new_tokens=T)) for n in names}
    compile_s = {}
    for name, (one, full) in engines.items():  # warm-up; the first call of a compiled engine compiles
        t0 = time.perf_counter()
        one.generate(model, no_eos, prompts, G)
        full.generate(model, no_eos, prompts, G)
        first = time.perf_counter() - t0
        if name.endswith("compile"):
            t0 = time.perf_counter()
            full.generate(model, no_eos, prompts, G)
            compile_s[name] = first - (time.perf_counter() - t0)
    step_ms: dict[str, list[float]] = {n: [] for n in names}
    bandwidth: list[dict[str, float]] = []
    threads = torch.get_num_threads()
    for r in range(args.repeats):
        bw = {f"{k}@{threads}t": v for k, v in read_bandwidth(buf, threads).items()}
        if threads != 1:
            bw.update({f"{k}@1t": v for k, v in read_bandwidth(buf, 1).items()})
        bandwidth.append(bw)
        for name in rotate(names, r):
            one, full = engines[name]
            torch.manual_seed(r)
            t1, _ = timed(one, model, no_eos, prompts, G)
            torch.manual_seed(r)
            tT, _ = timed(full, model, no_eos, prompts, G)
            step_ms[name].append((tT - t1) / (T - 1) * 1e3)
    bw_median = {k: statistics.median(b[k] for b in bandwidth) for k in bandwidth[0]}
    floor_bw = max(bw_median[f"sum@{threads}t"], bw_median[f"matvec@{threads}t"])
    weights = weight_bytes_per_step(model)
    floor_ms = weights / floor_bw / 1e6
    own_floor = {n: copy_weight_bytes(engines[n][1], model) / floor_bw / 1e6 for n in names}
    rows = {
        n: {
            "ms_per_step": statistics.median(v),
            "floor_ratio": statistics.median(v) / floor_ms,
            "own_floor_ms": own_floor[n],  # the floor of the format that samples (a copy's bytes)
            "own_floor_ratio": statistics.median(v) / own_floor[n],
            "ms_per_step_repeats": v,
            **({"compile_s": compile_s[n]} if n in compile_s else {}),
        }
        for n, v in step_ms.items()
    }
    return {
        "rows": G,
        "new_tokens": T,
        "weight_bytes_per_step": weights,
        "bandwidth_GBps": bw_median,
        "bandwidth_repeats": bandwidth,
        "floor_ms": floor_ms,
        "variants": rows,
    }


def greedy_equal(model, tok, names: list[str], args) -> dict[str, bool]:
    """Each variant's greedy completions (4 prompts x G=2, `--step-tokens`) equal `generate`'s?"""
    prompts = bench_prompts(4)
    run = lambda name: make_engine(name, max_new_tokens=args.step_tokens).generate(  # noqa: E731
        model, tok, prompts, 2, greedy=True
    )
    ref = run("generate").completion_ids
    # a rollout copy samples only: greedy answers are the policy's own, so the check says nothing about it
    return {n: torch.equal(run(n).completion_ids, ref) for n in names if n != "generate" and "copy" not in n}


def bench_rollouts(model, tok, names: list[str], args) -> dict:
    prompts = bench_prompts(args.prompts)
    engines = {n: make_engine(n, max_new_tokens=args.max_new_tokens) for n in names}
    for engine in engines.values():  # warm-up
        engine.generate(model, tok, prompts[:1], 2)
    times: dict[str, list[float]] = {k: [] for k in engines}
    tokens: dict[str, list[int]] = {k: [] for k in engines}
    for r in range(args.repeats):
        for name in rotate(names, r):
            torch.manual_seed(r)
            t, n = timed(engines[name], model, tok, prompts, args.G, clock=time.perf_counter)
            times[name].append(t)
            tokens[name].append(n)
    base = statistics.median(times["generate"])
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "tokens_per_s": statistics.median(n / t for n, t in zip(tokens[name], times[name])),
            "mean_completion_tokens": statistics.mean(tokens[name]) / (args.prompts * args.G),
            "speedup_vs_generate": base / statistics.median(times[name]),
            "times_s": times[name],
        }
        for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "smollm2"])
    parser.add_argument("--smollm2-path", default=None)
    parser.add_argument("--step-rows", type=int, default=8)
    parser.add_argument("--step-tokens", type=int, default=32)
    parser.add_argument("--rollout-sizes", nargs="*", default=["tiny", "small"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eos-bias", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant (minutes)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="clock of part 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    t_start = time.perf_counter()
    step_names = ["generate", "fast (before)", "fast", "fast + prepack", "fast, bf16 copy (plain)", "fast, bf16 copy"]
    step_names += ["fast, int8 copy"]
    step_names += ["fast, w8 copy"]
    step_names += ["fast + compile"] if args.compile else []
    rollout_names = ["generate", "fast (before)", "fast, prefill xG", "fast"]
    buf = torch.ones(BANDWIDTH_BYTES // 4)
    results = {}
    for size in dict.fromkeys(args.sizes + args.rollout_sizes):
        model, tok = load(size, args)
        r = {"params": num_params(model)}
        if size in args.sizes:
            r["steps"] = bench_steps(model, tok, step_names, args, buf)
            r["greedy_equals_generate"] = greedy_equal(model, tok, step_names, args)
        if size in args.rollout_sizes:
            r["rollouts"] = bench_rollouts(model, tok, rollout_names, args)
        results[size] = r
        print(f"{size} done at {time.perf_counter() - t_start:.0f} s", flush=True)
        del model
    meta = {k: v for k, v in vars(args).items() if k != "out"}
    meta["machine"] = machine()
    meta["wall_s"] = time.perf_counter() - t_start
    label = lambda size, r: f"{size} ({r['params'] / 1e6:.1f}M)"  # noqa: E731
    steps = [(s, r) for s, r in results.items() if "steps" in r]
    step_table = md_table(
        ["model", "variant", "ms / decode step", "fp32 floor ms", "x fp32 floor", "own floor ms", "x own floor",
         "compile s", "greedy = generate"],
        [
            [
                label(size, r),
                name,
                f"{v['ms_per_step']:.1f}",
                f"{r['steps']['floor_ms']:.1f}",
                f"{v['floor_ratio']:.2f}x",
                f"{v['own_floor_ms']:.1f}",
                f"{v['own_floor_ratio']:.2f}x",
                f"{v['compile_s']:.0f}" if "compile_s" in v else "",
                {True: "yes", False: "NO", None: ""}[r["greedy_equals_generate"].get(name)],
            ]
            for size, r in steps
            for name, v in r["steps"]["variants"].items()
        ],
    )
    floors = "; ".join(
        f"{size}: {r['steps']['weight_bytes_per_step'] / 1e6:.0f} MB of weights / "
        + ", ".join(f"{k} {v:.1f} GB/s" for k, v in r["steps"]["bandwidth_GBps"].items())
        for size, r in steps
    )
    rollout_table = md_table(
        ["model", "variant", "median s / rollout", "completion tok/s", "mean length", "speed-up vs generate"],
        [
            [
                label(size, r),
                name,
                f"{v['median_s']:.3f}",
                f"{v['tokens_per_s']:.0f}",
                f"{v['mean_completion_tokens']:.1f}",
                f"{v['speedup_vs_generate']:.2f}x",
            ]
            for size, r in results.items()
            if "rollouts" in r
            for name, v in r["rollouts"].items()
        ],
    )
    text = (
        f"Command: `python benchmarks/rollout_speed.py {' '.join(sys.argv[1:])}`\n\n"
        f"Machine: {meta['machine']}. {args.repeats} interleaved repeats; whole run {meta['wall_s']:.0f} s.\n\n"
        f"Decode step vs the memory-bandwidth floor: {args.step_rows} rows (1 prompt x G={args.step_rows}), "
        f"ms per step = (rollout of {args.step_tokens} tokens - rollout of 1) / {args.step_tokens - 1}, EOS "
        f"off, {args.clock} time (steps and bandwidth alike). Floor = weight bytes / read bandwidth (the faster of .sum() and matvec over 1 GiB, median, "
        f"measured between the runs): {floors}.\n\n{step_table}\n"
    )
    if rollout_table.count("\n") > 1:
        text += (
            f"\nWhole rollouts: {args.prompts} prompts x G={args.G}, max_new_tokens={args.max_new_tokens}, "
            f"eos_bias={args.eos_bias}.\n\n{rollout_table}\n"
        )
    os.makedirs(args.out, exist_ok=True)
    stem = "rollout_speed" + ("_eos" if args.eos_bias else "")
    Path(args.out, f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    Path(args.out, f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
