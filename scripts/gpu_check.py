"""GPU readiness check: the smoke experiment on one GPU (fp32, bf16-mixed, FSDP2 on one device) and the
rollout speed of a ~0.5 B-parameter Llama built in code; figures to benchmarks/results/gpu.{md,json}.

    bash scripts/gpu_check.sh                  # on the GPU machine (installs carried wheels, then this)
    python scripts/gpu_check.py --prepare-only # anywhere, CPU: compose and check everything, run nothing

`--prepare-only` (tested on CPU, tests/project/test_gpu_check.py) imports every package the check needs, composes
each training run's config exactly as train.py will (and validates it, and builds its strategy), composes
the rollout engine, builds the 0.5 B Llama's config and counts its parameters on the meta device (nothing
is allocated), and prints the plan as JSON. The full run does the same first (a failure there costs no GPU
time), then:

1. the three training runs, each `python train.py +experiment=smoke ...` in its own directory with the
   CSV logger next to TensorBoard (per-step `step_time`, `time/generation`, `loss` are read from it):
   `trainer=gpu trainer.precision=32-true`, `trainer=gpu` (bf16-mixed, its default), and
   `trainer=fsdp2` on one GPU in bf16-mixed (`warmstart=none`: the warm start has no FSDP2 hook);
2. the tests marked `gpu` (pytest -m gpu on GPU_TEST_FILES, the CUDA cases beside their CPU ones; pytest
   comes as a carried wheel): the summary line and the failures' tail go to the report;
3. the rollout benchmark: HF `generate` vs the engine's fast loop (benchmarks/rollout_speed.py's
   variants) on the 0.5 B Llama in bf16 on the GPU, random weights (the tokenizer is the benchmarks'
   `small` BPE), `--prompts` x `--G` completions of `--max-new-tokens`, median of `--repeats` wall times
   (CUDA synchronized); and the decode step (EOS disabled: (T-token rollout - 1-token rollout) / (T - 1))
   against its floor, the bf16 weight bytes one step reads / the read bandwidth of a device-to-device copy
   measured in the same run.

`--exercise-on-cpu` runs the same code on CPU at toy sizes (the training runs with
`trainer.accelerator=cpu` and 2 steps, a 2-layer Llama for the benchmark) so that a bug in this script is
found here, not in the device minutes; its figures mean nothing and go to --results (default: a temporary
folder, never benchmarks/results).

Each step has a time limit and the whole check a budget (`--budget-s`, default 480 s, inside the device
tool's 10-minute command limit): a step that would start past the budget is recorded as skipped. Results
also go to $OUT when it is set (the device tool brings back only what is under $OUT).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> train.py overrides (after +experiment=smoke); each run gets its own hydra.run.dir
TRAIN_RUNS: dict[str, list[str]] = {
    "gpu fp32": ["trainer=gpu", "trainer.precision=32-true"],
    "gpu bf16-mixed": ["trainer=gpu", "trainer.precision=bf16-mixed"],
    "fsdp2 1 GPU bf16-mixed": [
        "trainer=fsdp2", "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed",
        "warmstart=none",
    ],
}  # fmt: skip
COMMON = ["+experiment=smoke", "logger=[tensorboard,csv]", "trainer.max_steps=6"]
EXPECTED_TRAINER = {  # what each composed config must say (a wrong override order would run on CPU)
    "gpu fp32": {"accelerator": "gpu", "precision": "32-true", "devices": 1},
    "gpu bf16-mixed": {"accelerator": "gpu", "precision": "bf16-mixed", "devices": 1},
    "fsdp2 1 GPU bf16-mixed": {"accelerator": "gpu", "precision": "bf16-mixed", "devices": 1},
}
# the test files holding `gpu`-marked tests (tests/project/test_gpu_check.py keeps this list complete); only
# these are collected, so the packages of the other test files (hypothesis, wandb, ...) are not needed there
GPU_TEST_FILES = ["tests/grpo/test_grpo_module.py", "tests/rollout/test_rollout_engine.py"]
# ~0.5 B parameters, Llama architecture (Qwen2.5-0.5B-like widths, a 32 K vocabulary, untied LM head)
LLAMA_05B = dict(
    vocab_size=32000,
    hidden_size=1280,
    intermediate_size=3456,
    num_hidden_layers=24,
    num_attention_heads=20,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
LLAMA_TOY = dict(LLAMA_05B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=8192)  # fmt: skip
CPU_EXERCISE = ["trainer.accelerator=cpu", "trainer.max_steps=2"]
REQUIRED = ["torch", "lightning", "transformers", "peft", "tensorboard", "hydra", "omegaconf", "datasets"]
REQUIRED += ["medcalc", "matplotlib", "regex", "httpx", "pytest"]
WHEELS_HINT = "Fix: run `bash scripts/gpu_wheels.sh` here and carry .whl to the device (scripts/gpu_check.sh)"


# ------------------------------------------------------------------------------------------- preparation
def check_imports() -> dict[str, str]:
    """{package: version} of every package the check needs; SystemExit naming the missing ones."""
    versions, missing = {}, []
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - an import that fails for any reason is missing here
            missing.append(f"{name} ({type(err).__name__}: {err})")
            continue
        versions[name] = str(getattr(module, "__version__", "?"))
    if missing:
        raise SystemExit("gpu_check: cannot import " + "; ".join(missing) + ". " + WHEELS_HINT)
    return versions


def compose_train(name: str, run_dir: str):
    """The config train.py composes for run `name`, validated, its trainer arguments and strategy built."""
    from hydra import compose, initialize_config_dir

    from quark_lightning.cli.run import trainer_kwargs
    from quark_lightning.config.validate import validate_config

    overrides = [*COMMON, *TRAIN_RUNS[name], f"run_dir={run_dir}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    for key, want in EXPECTED_TRAINER[name].items():
        if cfg.trainer[key] != want:
            raise SystemExit(
                f"gpu_check: run {name!r}: trainer.{key} composed as {cfg.trainer[key]!r}, not {want!r}"
            )
    validate_config(cfg)
    kwargs = trainer_kwargs(cfg)  # builds the strategy object (FSDP2Strategy for the fsdp2 run)
    return cfg, {
        k: (type(v).__name__ if k == "strategy" and not isinstance(v, str) else v) for k, v in kwargs.items()
    }


def compose_rollout(max_new_tokens: int):
    """The `rollout=hf` engine the benchmark's `fast` variant is (instantiated from conf/rollout/hf.yaml)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["run_dir=.", f"rollout.max_new_tokens={max_new_tokens}"]
        )
    return instantiate(cfg.rollout)


def llama_05b_config(sizes: dict | None = None):
    """The 0.5 B Llama's config and its parameter count, counted on the meta device (no memory)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(sizes or LLAMA_05B))
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    return config, sum(p.numel() for p in params)


def prepare(args) -> dict:
    """Everything the check needs, composed and checked on any machine; the plan as a JSON-able dict."""
    versions = check_imports()
    runs = {}
    for name in TRAIN_RUNS:
        _, kwargs = compose_train(name, str(Path(args.work_dir) / "plan"))
        runs[name] = {"overrides": [*COMMON, *TRAIN_RUNS[name]], "trainer": kwargs}
    engine = compose_rollout(args.max_new_tokens)
    rollout_speed = importlib.import_module("benchmarks.rollout_speed")
    for variant in ("generate", "fast"):
        rollout_speed.make_engine(variant, max_new_tokens=args.max_new_tokens)  # the variants exist
    _, n_params = llama_05b_config()
    return {
        "packages": versions,
        "train_runs": runs,
        "rollout_engine": type(engine).__name__,
        "llama_05b": {"config": LLAMA_05B, "parameters": n_params},
        "benchmark": {
            k: getattr(args, k) for k in ("prompts", "G", "max_new_tokens", "step_tokens", "repeats")
        },
        "budget_s": args.budget_s,
    }


# ------------------------------------------------------------------------------------------- the GPU run
def run_gpu_tests(work: Path, timeout_s: float) -> dict:
    """`pytest -m gpu` on GPU_TEST_FILES in a subprocess: its summary line, and the tail when it failed."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", *GPU_TEST_FILES]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, log = "timeout", f"{err.stdout or ''}{err.stderr or ''}"
    log = log if isinstance(log, str) else log.decode(errors="replace")
    (work / "gpu_tests.log").write_text(log)
    lines = [line for line in log.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "?"  # pytest's last line: "2 passed, 3 deselected in 9.1s"
    return {"command": " ".join(cmd[1:]), "rc": rc, "summary": summary, **({"tail": log[-1500:]} if rc else {})}


def csv_metrics(run_dir: Path) -> dict[str, float]:
    """Medians over the steps of step_time, time/generation, and the last loss, from the CSV logger."""
    path = run_dir / "csv" / "grpo" / "metrics.csv"
    if not path.exists():
        return {}
    rows = list(csv.DictReader(open(path)))
    out = {}
    for key in ("step_time", "time/generation", "time/policy"):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            out[f"{key} median s"] = statistics.median(values[1:] or values)  # the first step warms up
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    if losses:
        out["final loss"] = losses[-1]
    return out


def run_train(name: str, work: Path, timeout_s: float, extra: list[str]) -> dict:
    run_dir = work / name.replace(" ", "_")
    cmd = [sys.executable, "train.py", *COMMON, *TRAIN_RUNS[name], *extra, f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", QUARK_CACHE=str(work / "cache"))
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, log = "timeout", f"{err.stdout or ''}{err.stderr or ''}"
    wall = time.perf_counter() - started
    (work / f"{name.replace(' ', '_')}.log").write_text(log if isinstance(log, str) else str(log))
    result = {"command": " ".join(cmd[1:]), "rc": rc, "wall_s": round(wall, 1)}
    if rc == 0:
        summary = json.loads((run_dir / "summary.json").read_text())
        reward = summary["metrics"]["reward"]
        result |= {"reward start": reward["start"], "reward end": reward["end"], **csv_metrics(run_dir)}
        result["checkpoint"] = (run_dir / "checkpoints" / "last.ckpt").exists()
    else:
        result["error tail"] = log[-1500:] if isinstance(log, str) else ""
    return result


def copy_bandwidth_GBps(torch, device: str, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Read bandwidth of a device-to-device copy (bytes read per second; the copy also writes as many)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        times.append(time.perf_counter() - t0)
    del src, dst
    return nbytes / statistics.median(times) / 1e9


def bench_rollout(args) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from benchmarks._models import bench_prompts, model_dir
    from benchmarks.rollout_speed import NoEOS, make_engine, weight_bytes_per_step
    from quark_lightning.models.loading import load_causal_lm

    device = "cpu" if args.exercise_on_cpu else "cuda"
    tokenizer = load_causal_lm(model_dir("small")).tokenizer  # BPE trained on the bundled text
    config, n_params = llama_05b_config(LLAMA_TOY if args.exercise_on_cpu else None)
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    prompts = bench_prompts(args.prompts)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def rollout_s(engine, tok, rows_prompts, G) -> tuple[float, int]:
        sync()
        t0 = time.perf_counter()
        out = engine.generate(model, tok, rows_prompts, G)
        sync()
        return time.perf_counter() - t0, int(out.completion_mask.sum())

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (exercise)"
    result: dict = {"parameters": n_params, "dtype": "bfloat16", "device": name}
    variants = ("generate", "fast")
    engines = {v: make_engine(v, max_new_tokens=args.max_new_tokens) for v in variants}
    for engine in engines.values():
        rollout_s(engine, tokenizer, prompts[:1], 2)  # warm-up (kernels, allocator)
    for v in variants:
        runs = [rollout_s(engines[v], tokenizer, prompts, args.G) for _ in range(args.repeats)]
        seconds = statistics.median(t for t, _ in runs)
        tokens = statistics.median(n for _, n in runs)
        result[f"rollout {v}"] = {
            "median_s": round(seconds, 3),
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
        }
    no_eos, T = NoEOS(tokenizer), args.step_tokens
    step_ms = {}
    for v in variants:
        long = make_engine(v, max_new_tokens=T)
        short = make_engine(v, max_new_tokens=1)
        rollout_s(long, no_eos, prompts[:1], args.G)
        t_long = statistics.median(
            rollout_s(long, no_eos, prompts[:1], args.G)[0] for _ in range(args.repeats)
        )
        t_short = statistics.median(
            rollout_s(short, no_eos, prompts[:1], args.G)[0] for _ in range(args.repeats)
        )
        step_ms[v] = (t_long - t_short) / (T - 1) * 1e3
    bandwidth = copy_bandwidth_GBps(torch, device, nbytes=(1 << 26) if device == "cpu" else (1 << 30))
    floor_ms = weight_bytes_per_step(model) / (bandwidth * 1e9) * 1e3
    result["decode step"] = {
        "rows": args.G,
        "ms": {v: round(ms, 3) for v, ms in step_ms.items()},
        "floor_ms": round(floor_ms, 4),
        "floor_ratio": {v: round(ms / floor_ms, 2) for v, ms in step_ms.items()},
        "copy_read_bandwidth_GBps": round(bandwidth, 1),
        "weight_bytes": weight_bytes_per_step(model),
    }
    result["peak_memory_GiB"] = (
        round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None
    )
    return result


def write_report(results: dict, out_dir: Path) -> Path:
    lines = [
        "# GPU check (`bash scripts/gpu_check.sh`)",
        "",
        f"Machine: {results.get('gpu', '?')}; packages: "
        + ", ".join(f"{k} {v}" for k, v in results["plan"]["packages"].items()),
        "",
        "## The smoke experiment on one GPU",
        "",
        "| run | rc | wall s | reward start | reward end | step_time median s | time/generation median s | checkpoint |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["train"].items():
        cells = [name, r.get("rc"), str(r.get("wall_s")), r.get("reward start"), r.get("reward end"),
                 r.get("step_time median s"), r.get("time/generation median s"), r.get("checkpoint")]  # fmt: skip
        lines.append(
            "| "
            + " | ".join(
                "–" if c is None else (f"{c:.4f}" if isinstance(c, float) else str(c)) for c in cells
            )
            + " |"
        )
    tests = results.get("gpu_tests") or {}
    lines += ["", "## Tests marked gpu", "", f"`{tests.get('command', 'not run')}`: rc {tests.get('rc')}, "
              f"{tests.get('summary', '')}"]  # fmt: skip
    bench = results.get("rollout")
    lines += ["", "## Rollout speed, 0.5 B Llama (bf16, random weights)", ""]
    if isinstance(bench, dict) and "decode step" in bench:
        b = results["plan"]["benchmark"]
        lines += [
            f"{bench['parameters'] / 1e6:.0f} M parameters; {b['prompts']} prompts x G={b['G']}, "
            f"{b['max_new_tokens']} new tokens, median of {b['repeats']}; peak memory {bench['peak_memory_GiB']} GiB.",
            "",
            "| variant | rollout s | tokens/s | decode step ms | x floor |",
            "|---|---|---|---|---|",
        ]
        for v in ("generate", "fast"):
            r, d = bench[f"rollout {v}"], bench["decode step"]
            lines.append(
                f"| {v} | {r['median_s']} | {r['tokens_per_s']} | {d['ms'][v]} | {d['floor_ratio'][v]} |"
            )
        d = bench["decode step"]
        lines += ["", f"Floor: {d['weight_bytes'] / 1e9:.2f} GB of weights / {d['copy_read_bandwidth_GBps']} GB/s "
                  f"(read bandwidth of a device-to-device copy) = {d['floor_ms']} ms a step."]  # fmt: skip
    else:
        lines.append(f"not measured: {bench}")
    text = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu.md").write_text(text)
    (out_dir / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
    return out_dir / "gpu.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-only", action="store_true", help="compose and check on CPU; run nothing")
    parser.add_argument("--exercise-on-cpu", action="store_true", help="run this script's code at toy sizes")
    parser.add_argument("--work-dir", default="/tmp/quark_gpu_check")
    parser.add_argument("--results", default=None, help="default: benchmarks/results (GPU run)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--step-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--step-timeout-s", type=float, default=180.0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    plan = prepare(args)
    if args.prepare_only:
        print(json.dumps(plan, indent=2, default=str))
        return 0
    import torch

    if args.exercise_on_cpu:
        args.prompts, args.G, args.max_new_tokens, args.step_tokens, args.repeats = 2, 2, 8, 4, 1
        plan["benchmark"] = {k: getattr(args, k) for k in plan["benchmark"]}
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device. Fix: run it on the GPU machine, or pass --prepare-only")
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results_dir = Path(
        args.results or (work / "results" if args.exercise_on_cpu else REPO / "benchmarks" / "results")
    )
    gpu = "cpu (exercise)" if args.exercise_on_cpu else torch.cuda.get_device_name()
    results: dict = {"plan": plan, "gpu": gpu, "train": {}}
    extra = CPU_EXERCISE if args.exercise_on_cpu else []
    results["gpu_tests"] = run_gpu_tests(work, min(args.step_timeout_s, args.budget_s - 60))
    print("gpu tests", json.dumps(results["gpu_tests"], default=str)[:400], flush=True)
    for name in TRAIN_RUNS:
        left = args.budget_s - (time.perf_counter() - started)
        if left < 60:
            results["train"][name] = {"rc": "skipped (budget)"}
            continue
        results["train"][name] = run_train(name, work, min(args.step_timeout_s, left), extra)
        print(name, json.dumps(results["train"][name], default=str)[:400], flush=True)
    if args.budget_s - (time.perf_counter() - started) > 60:
        try:
            results["rollout"] = bench_rollout(args)
        except Exception as err:  # noqa: BLE001 - record it; the training figures still get written
            results["rollout"] = f"{type(err).__name__}: {err}"
    else:
        results["rollout"] = "skipped (budget)"
    report = write_report(results, results_dir)
    print(report.read_text())
    if os.environ.get("OUT"):  # the device tool brings back what is under $OUT (8 files at most)
        for path in [report, report.with_suffix(".json"), *sorted(work.glob("*.log"))][:8]:
            shutil.copy(path, os.environ["OUT"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
