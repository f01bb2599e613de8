"""Gradient checkpointing on SmolLM2-135M-Instruct: peak memory and time of one GRPO policy update, on CPU.

    python benchmarks/gradient_checkpointing.py     # writes benchmarks/results/gradient_checkpointing.{json,md}
    taskset -c 0 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/gradient_checkpointing.py

Each arm runs in its own process (a fresh allocator, so one arm's freed memory cannot serve another):
SmolLM2 (fp32) is loaded through the trainer's path (model=smollm2), wrapped in GRPOModule with
`algorithm.gradient_checkpointing` off or on, and one policy update runs on a fixed synthetic rollout of
`--completions` completions of `--completion-tokens` tokens after a `--prompt-tokens`-token prompt
(random token ids, G = 4): the policy's token log-probs (chunked LM head), the GRPO loss, backward.
Memory: the process's resident set sampled every 2 ms by a thread; reported is the peak during the update
minus the resident set just before it (activations, gradients, temporaries; the weights are already
resident). Time: wall clock of the update. Arms: full fine-tuning and LoRA (r=16 on the attention and MLP
projections), each without and with checkpointing. Results are cached per arm in the JSON file (rerun
skips measured arms; --fresh measures again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

OUT = os.path.join(REPO, "benchmarks", "results", "gradient_checkpointing")
ARMS = {
    "full": {"lora": False, "ckpt": False},
    "full+ckpt": {"lora": False, "ckpt": True},
    "lora": {"lora": True, "ckpt": False},
    "lora+ckpt": {"lora": True, "ckpt": True},
}


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(arm: str, completions: int, prompt_tokens: int, completion_tokens: int) -> dict:
    """One arm, in this process."""
    import torch

    from benchmarks._models import smollm2_dir
    from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
    from quark_lightning.matrix import AlignmentMatrix, Dimension
    from quark_lightning.models.loading import apply_lora, load_causal_lm
    from quark_lightning.rollout.engine import Rollout
    from quark_lightning.scorers.format import FormatScorer

    spec = ARMS[arm]
    torch.manual_seed(0)
    loaded = load_causal_lm(smollm2_dir())
    policy = loaded.model
    if spec["lora"]:
        policy = apply_lora(policy, r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    matrix = AlignmentMatrix([Dimension("format_rules", "format", FormatScorer())])
    config = GRPOConfig(
        num_generations=4, beta=0.0, gradient_checkpointing=spec["ckpt"], logprob_chunk_size=256
    )
    module = GRPOModule(policy, loaded.tokenizer, matrix, config)
    module.policy.train()
    V, N, P, C = policy.config.vocab_size, completions, prompt_tokens, completion_tokens
    g = torch.Generator().manual_seed(1)
    rollout = Rollout(
        prompt_ids=torch.randint(0, V, (N // 4, P), generator=g).repeat_interleave(4, 0),
        prompt_mask=torch.ones(N, P, dtype=torch.long),
        completion_ids=torch.randint(0, V, (N, C), generator=g),
        completion_mask=torch.ones(N, C, dtype=torch.long),
        completions=[""] * N,
        prompts=[{"id": f"p{i // 4}"} for i in range(N)],
        truncated=torch.zeros(N, dtype=torch.bool),
        prompt_truncated=torch.zeros(N, dtype=torch.bool),
    )
    advantages = torch.linspace(-1, 1, N)
    from quark_lightning.grpo.loss import grpo_policy_loss

    def update() -> float:
        logp, _ = module.logps(
            module.policy,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.completion_ids,
            rollout.completion_mask.float(),
        )
        out = grpo_policy_loss(logp, logp.detach(), None, advantages, rollout.completion_mask.float())
        out.loss.backward()
        return float(out.loss)

    base, peak, stop = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    loss = update()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    grad = (
        sum(float(p.grad.float().norm() ** 2) for p in module.policy.parameters() if p.grad is not None)
        ** 0.5
    )
    return {
        "peak_mb_over_base": round(max(peak[0], rss_mb()) - base, 1),
        "base_rss_mb": round(base, 1),
        "seconds": round(seconds, 2),
        "loss": loss,
        "grad_norm": grad,
        "trainable_params": sum(p.numel() for p in module.policy.parameters() if p.requires_grad),
    }


def write_markdown(results: dict) -> None:
    from benchmarks._models import md_table

    arms = results["arms"]
    rows = []
    for arm in ARMS:
        r = arms.get(arm)
        if r is None:
            continue
        plain = arms.get(arm.replace("+ckpt", ""))
        mem = (
            f"{r['peak_mb_over_base'] / plain['peak_mb_over_base']:.2f}x"
            if plain and "+ckpt" in arm
            else "1.00x"
        )
        time_ratio = f"{r['seconds'] / plain['seconds']:.2f}x" if plain and "+ckpt" in arm else "1.00x"
        rows.append([arm, r["peak_mb_over_base"], mem, r["seconds"], time_ratio, f"{r['grad_norm']:.6g}"])
    text = "\n".join(
        [
            "# Gradient checkpointing on SmolLM2-135M-Instruct (one GRPO policy update, CPU)",
            "",
            f"Command: `{results['command']}`",
            f"Machine: {results['machine']}",
            f"Rollout: {results['completions']} completions x {results['completion_tokens']} tokens after "
            f"{results['prompt_tokens']}-token prompts (G = 4), fp32, chunked LM head (256 tokens).",
            "",
            md_table(["arm", "peak MB over base", "vs without", "seconds", "vs without", "grad norm"], rows),
            "",
        ]
    )
    with open(OUT + ".md", "w") as fh:
        fh.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--completions", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--completion-tokens", type=int, default=192)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: measure one arm, print JSON
    args = ap.parse_args()
    if args.arm:
        print(
            "RESULT "
            + json.dumps(measure(args.arm, args.completions, args.prompt_tokens, args.completion_tokens))
        )
        return
    from benchmarks._models import machine, run_cached_arms

    def run_arm(arm: str) -> dict:  # each arm in a fresh process (its own allocator and peak)
        cmd = [sys.executable, os.path.abspath(__file__), "--arm", arm, "--completions", str(args.completions),
               "--prompt-tokens", str(args.prompt_tokens), "--completion-tokens", str(args.completion_tokens)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            raise SystemExit(f"{arm} failed:\n{proc.stderr[-3000:]}")
        return json.loads(line[0][len("RESULT ") :])

    meta = dict(
        command="python benchmarks/gradient_checkpointing.py "
        + " ".join(a for a in sys.argv[1:] if a != "--fresh"),
        machine=machine() + f", affinity {sorted(os.sched_getaffinity(0))}",
        completions=args.completions,
        prompt_tokens=args.prompt_tokens,
        completion_tokens=args.completion_tokens,
    )
    run_cached_arms(OUT, args.fresh, meta, ARMS, run_arm, write_markdown)


if __name__ == "__main__":
    main()
