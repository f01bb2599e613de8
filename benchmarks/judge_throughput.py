"""Judged items per second: in-process judge vs a `transformers serve` judge server, and cache hits.

    python benchmarks/judge_throughput.py                      # writes benchmarks/results/judge_throughput.{json,md}
    taskset -c 0 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/judge_throughput.py   # one core

Judge: SmolLM2-135M-Instruct (model=smollm2's source, fetched and converted once). Items: the rubric
matcher's YES/NO question (rubric_matchers.JUDGE_PROMPT) for the first `--items` (rubric item,
reference answer) pairs of the bundled prompts, greedy, `--max-tokens` reply tokens. The same items in
every arm, each arm in a fresh judge with no disk cache unless it measures the cache:

  in_process      LocalJudge (the model in this process), batch_size 8 (left-padded batches)
  server_c1       OpenAICompatibleJudge -> transformers serve, max_concurrency 1 (one request at a time)
  server_c8       the same server, max_concurrency 8 (8 requests in flight)
  server_cb_c8    `transformers serve --continuous-batching` (paged attention), max_concurrency 8
  cache_hits      a second pass over the items through a judge whose disk cache the first pass filled

The server and this process are pinned to the same cores as the caller (taskset) with the same torch
thread count, so arms compare on equal CPU. Each arm's result is cached in the JSON file: rerunning
skips arms already measured (delete the file, or pass --fresh, to measure again). Replies of the server
arms are compared with the in-process replies (same model, greedy).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks._models import machine, md_table, run_cached_arms, smollm2_dir  # noqa: E402

OUT = os.path.join(REPO, "benchmarks", "results", "judge_throughput")
ARMS = ("in_process", "server_c1", "server_c8", "server_cb_c8", "cache_hits")


def judge_items(n: int) -> list[list[dict]]:
    from quark_lightning.data import BUNDLED_PROMPTS
    from quark_lightning.data.datamodule import load_prompt_records
    from quark_lightning.scorers.rubric_matchers import judge_messages

    items = [
        judge_messages(item, record["reference"])
        for record in load_prompt_records(str(BUNDLED_PROMPTS))
        if record.get("reference")
        for item in record.get("rubric") or []
    ]
    return items[:n]


def timed(judge, items) -> dict:
    start = time.perf_counter()
    replies = judge.complete(items)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 3),
        "items_per_s": round(len(items) / seconds, 3),
        "failed": sum(not r.ok for r in replies),
        "stats": judge.stats(),
        "replies": [r.text for r in replies],
    }


def run_arm(arm: str, model: str, items, max_tokens: int) -> dict:
    from quark_lightning.judges import JudgeConfig
    from quark_lightning.judges.local import LocalJudge
    from quark_lightning.judges.local_server import transformers_serve
    from quark_lightning.judges.openai_compatible import OpenAICompatibleJudge

    if arm == "in_process":
        return timed(
            LocalJudge(JudgeConfig(kind="local", model=model, max_tokens=max_tokens, batch_size=8)), items
        )
    if arm == "cache_hits":
        with tempfile.TemporaryDirectory() as cache:
            cfg = JudgeConfig(kind="local", model=model, max_tokens=max_tokens, batch_size=8, cache_dir=cache)
            LocalJudge(cfg).complete(items)  # fills the cache (not timed)
            return timed(LocalJudge(cfg), items)
    concurrency = {"server_c1": 1, "server_c8": 8, "server_cb_c8": 8}[arm]
    extra = ["--continuous-batching"] if arm == "server_cb_c8" else []
    with transformers_serve(model, threads=torch.get_num_threads(), extra_args=extra) as base_url:
        cfg = JudgeConfig(
            kind="openai", base_url=base_url, model=model, max_tokens=max_tokens, max_concurrency=concurrency,
            timeout_s=600.0,
        )  # fmt: skip
        OpenAICompatibleJudge(cfg).complete(items[-concurrency:])  # warm-up (not timed; not the first items)
        return timed(OpenAICompatibleJudge(cfg), items)


def write_markdown(results: dict) -> None:
    base = results["arms"].get("in_process")
    rows = []
    for arm in ARMS:
        r = results["arms"].get(arm)
        if r is None:
            continue
        same = (
            "n/a"
            if base is None or arm == "in_process"
            else f"{sum(a == b for a, b in zip(r['replies'], base['replies']))}/{len(r['replies'])}"
        )
        ratio = f"{r['items_per_s'] / base['items_per_s']:.2f}x" if base else "n/a"
        rows.append([arm, r["seconds"], r["items_per_s"], ratio, r["stats"]["requests"], r["failed"], same])
    text = "\n".join(
        [
            "# Judge throughput",
            "",
            f"Command: `{results['command']}`",
            f"Machine: {results['machine']}",
            f"Judge: SmolLM2-135M-Instruct, {results['items']} rubric YES/NO items, greedy, "
            f"max {results['max_tokens']} reply tokens.",
            "",
            md_table(
                [
                    "arm",
                    "seconds",
                    "items/s",
                    "vs in-process",
                    "requests sent",
                    "failed",
                    "replies = in-process",
                ],
                rows,
            ),
            "",
        ]
    )
    with open(OUT + ".md", "w") as fh:
        fh.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--fresh", action="store_true", help="measure every arm again")
    args = ap.parse_args()
    model = smollm2_dir()
    items = judge_items(args.items)
    meta = dict(
        command="python benchmarks/judge_throughput.py " + " ".join(sys.argv[1:]),
        machine=machine() + f", affinity {sorted(os.sched_getaffinity(0))}",
        items=len(items),
        max_tokens=args.max_tokens,
    )
    run_cached_arms(
        OUT, args.fresh, meta, ARMS, lambda arm: run_arm(arm, model, items, args.max_tokens), write_markdown
    )


if __name__ == "__main__":
    main()
