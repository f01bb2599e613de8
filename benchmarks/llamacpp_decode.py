"""Is the fp32 bandwidth floor reachable at 8 rows on this CPU? Our decode step beside llama.cpp's, one run.

    taskset -c 1 python benchmarks/llamacpp_decode.py --llama-cpp DIR [--formats F32 BF16 Q8_0]
        [--rows 1 8] [--tokens 32] [--prompt-tokens 64] [--threads 1] [--repeats 3]
    python benchmarks/llamacpp_decode.py --from-json benchmarks/results/llamacpp_decode.json   # render again

DIR holds llama.cpp's `llama-batched-bench` and `llama-quantize`. llama.cpp is not a dependency of the
project; to build the two tools from the source that ships in the llama-cpp-python sdist (about 10 minutes
on 2 cores, needs cmake and a C++ compiler):

    pip download --no-deps llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp && cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build build -j2 --target llama-batched-bench llama-quantize     # DIR = build/bin

What is compared: a decode step of SmolLM2-135M-Instruct for `--rows` sequences sharing one prompt.
- llama.cpp: the GGUF that `model=smollm2` converts from (the wheel's Q4_1 file), requantized to each of
  `--formats` (`--allow-requantize`: the values are Q4_1's, the speed is the format's), timed by
  `llama-batched-bench -pps` (prompt shared; ms per step = its generation time / `--tokens`);
- ours: the engine's fast loop on the fp32 policy (`fast`) and on the packed bf16 copy (`fast, bf16 copy`,
  rollout.precision=bf16), timed as benchmarks/rollout_speed.py times them (wall clock here, as llama.cpp).
The floor is rollout_speed's: every fp32 weight read once per step at the read bandwidth measured in the
same run; a format's own floor counts its file's bytes. Every repeat runs every engine once, alternating
which goes first. Writes benchmarks/results/llamacpp_decode.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` finds `benchmarks`

import torch  # noqa: E402

from benchmarks import rollout_speed  # noqa: E402
from benchmarks._models import machine, md_table, smollm2_dir  # noqa: E402
from quark_lightning.models.fetch import SMOLLM2, default_cache_dir, ensure_wheel_file  # noqa: E402
from quark_lightning.models.loading import load_causal_lm  # noqa: E402

OURS = ("fast", "fast, bf16 copy")


def tool(folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    if not os.access(path, os.X_OK):
        sys.exit(
            f"--llama-cpp {folder}: no executable {name} there. Fix: build it as this script's docstring says"
        )
    return path


def requantize(folder: str, gguf: str, formats: list[str], out: str) -> dict[str, str]:
    """The wheel's GGUF in each format (llama-quantize --allow-requantize)."""
    paths = {}
    for fmt in formats:
        path = os.path.join(out, f"smollm2-{fmt}.gguf")
        run = subprocess.run(
            [tool(folder, "llama-quantize"), "--allow-requantize", gguf, path, fmt],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            sys.exit(f"llama-quantize {fmt} failed:\n{run.stderr[-2000:]}")
        paths[fmt] = path
    return paths


def llama_step_ms(folder: str, gguf: str, args) -> dict[int, float]:
    """{rows: ms per decode step} from one `llama-batched-bench` call over every `--rows`."""
    cmd = [
        tool(folder, "llama-batched-bench"), "-m", gguf, "-c", "4096", "-b", "512", "-ub", "512", "-pps",
        "-npp", str(args.prompt_tokens), "-ntg", str(args.tokens), "-npl", ",".join(map(str, args.rows)),
        "-t", str(args.threads), "-tb", str(args.threads),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"llama-batched-bench failed:\n{run.stderr[-2000:]}")
    out = {}
    for line in run.stdout.splitlines():  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | ...
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0].isdigit():
            out[int(cells[2])] = float(cells[6]) / int(cells[1]) * 1e3
    if set(out) != set(args.rows):
        sys.exit(f"could not read llama-batched-bench's table:\n{run.stdout[-2000:]}")
    return out


def ours_step(model, tok, rows: int, args, buf) -> dict:
    """rollout_speed's decode-step measurement of OURS at `rows` rows, one repeat."""
    opts = argparse.Namespace(step_rows=rows, step_tokens=args.tokens, repeats=1)
    return rollout_speed.bench_steps(model, tok, list(OURS), opts, buf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", help="folder with llama-batched-bench and llama-quantize")
    parser.add_argument("--from-json", help="render the markdown of a stored run's JSON again, run nothing")
    parser.add_argument("--formats", nargs="+", default=["F32", "BF16", "Q8_0"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.from_json:
        write_markdown(json.loads(Path(args.from_json).read_text()), Path(args.out))
        return
    if not args.llama_cpp:
        parser.error("--llama-cpp DIR is required (the folder with llama.cpp's two tools; see the docstring)")

    torch.set_num_threads(args.threads)
    rollout_speed.CLOCK = time.perf_counter  # wall clock, as llama-batched-bench reports
    loaded = load_causal_lm(smollm2_dir())
    model, tok = loaded.model, loaded.tokenizer
    buf = torch.ones(rollout_speed.BANDWIDTH_BYTES // 4)
    llama: dict[str, dict[int, list[float]]] = {f: {r: [] for r in args.rows} for f in args.formats}
    ours: dict[str, dict[int, list[float]]] = {n: {r: [] for r in args.rows} for n in OURS}
    floors: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        ggufs = requantize(args.llama_cpp, ensure_wheel_file(SMOLLM2, default_cache_dir()), args.formats, tmp)
        sizes = {f: os.path.getsize(p) for f, p in ggufs.items()}
        for r in range(args.repeats):
            for side in rollout_speed.rotate(["llama.cpp", "ours"], r):
                if side == "llama.cpp":
                    for fmt in rollout_speed.rotate(args.formats, r):
                        for rows, ms in llama_step_ms(args.llama_cpp, ggufs[fmt], args).items():
                            llama[fmt][rows].append(ms)
                    continue
                for rows in args.rows:
                    res = ours_step(model, tok, rows, args, buf)
                    floors.append(res["floor_ms"])
                    for name in OURS:
                        ours[name][rows].append(res["variants"][name]["ms_per_step"])
            print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    floor = statistics.median(floors)
    fp32_bytes = rollout_speed.weight_bytes_per_step(model)
    own_bytes = {
        **{f: sizes[f] for f in args.formats},
        "fast": fp32_bytes,
        "fast, bf16 copy": fp32_bytes // 2,
    }
    rows_out = []
    for engine, table in (("llama.cpp", llama), ("ours", ours)):
        for name, by_rows in table.items():
            for rows, values in by_rows.items():
                ms = statistics.median(values)
                own = floor * own_bytes[name] / fp32_bytes
                rows_out.append(
                    {"engine": engine, "format": name, "rows": rows, "ms_per_step": ms, "x_fp32_floor": ms / floor,
                     "own_floor_ms": own, "x_own_floor": ms / own, "repeats": values}
                )  # fmt: skip
    result = {
        "machine": machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "tokens": args.tokens,
        "prompt_tokens": args.prompt_tokens,
        "fp32_weight_bytes": fp32_bytes,
        "floor_ms": floor,
        "floor_ms_repeats": floors,
        "gguf_bytes": sizes,
        "rows": rows_out,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llamacpp_decode.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, out)


def write_markdown(result: dict, out: Path) -> None:
    """llamacpp_decode.md from the run's JSON (also `--from-json`, to render a stored run again)."""
    repeats = len(result["rows"][0]["repeats"])
    table = md_table(
        ["engine", "format", "rows", "ms / step (median)", "min - max of the repeats", "x fp32 floor", "x own floor"],
        [
            [r["engine"], r["format"], r["rows"], f"{r['ms_per_step']:.1f}",
             f"{min(r['repeats']):.1f} - {max(r['repeats']):.1f}", f"{r['x_fp32_floor']:.2f}x",
             f"{r['x_own_floor']:.2f}x"]
            for r in result["rows"]
        ],
    )  # fmt: skip
    floors = result["floor_ms_repeats"]
    (out / "llamacpp_decode.md").write_text(
        f"# Decode step: ours beside llama.cpp (SmolLM2-135M-Instruct)\n\n"
        f"`python benchmarks/llamacpp_decode.py --llama-cpp DIR --threads {result['threads']} --repeats {repeats}`"
        f" on {result['machine']}; {result['threads']} thread(s), {result['tokens']} new tokens after a "
        f"{result['prompt_tokens']}-token shared prompt, median of {repeats} interleaved repeats, wall clock "
        "(timing: no sampling seeds matter; ours draws with torch.manual_seed(repeat)).\n\n"
        f"fp32 floor: {result['fp32_weight_bytes'] / 1e6:.0f} MB of weights read once per step at the measured "
        f"bandwidth = **{result['floor_ms']:.1f} ms** (median; {min(floors):.1f} - {max(floors):.1f} over the "
        f"{len(floors)} bandwidth measurements); a format's own floor counts its bytes (GGUF file size, bf16 copy: "
        "half).\n\n"
        f"{table}\n"
    )
    print((out / "llamacpp_decode.md").read_text())


if __name__ == "__main__":
    main()
