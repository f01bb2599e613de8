"""Reward-model backbones: the tiny model vs the policy's base model (SmolLM2-135M-Instruct), on CPU.

    python benchmarks/rm_backbones.py          # writes benchmarks/results/rm_backbones.{json,md}
    taskset -c 1 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/rm_backbones.py   # one core

Both of the matrix's reward models, each trained through the path a matrix takes
(`resolved_scorer_config(train_experiment=..., backbone=..., policy_model=...)` -> `ensure_reward_model` ->
`run_reward_model`), in a fresh cache so every one is trained here, on the bundled data and its held-out
split by question, with the experiments' default settings (150 / 100 steps, ties loss λ=0.5, one seed):

  rm_orm      preference pairs with ties                       -> correctness_macro
  rm_online   online like/dislike feedback turned into pairs   -> online_rm

on two backbones:

  tiny        backbone=tiny: the tiny model built in code, every weight trained (train_backbone=full)
  smollm2     backbone=policy with model=smollm2: frozen SmolLM2-135M-Instruct features (one forward per
              distinct text, cached) + the 2-layer head trained on them (train_backbone=auto -> frozen)

Reported per run (held-out split): pair accuracy (preferred pairs ranked right), tie accuracy
(|r_1 - r_2| < 0.5), mean |delta| on ties, reward std and |delta|_ties / std (tie accuracy at a fixed
threshold depends on each model's reward scale; the ratio does not), feature-caching time, head/model
training time, and the scoring cost in a GRPO step: `ORMScorer.score` on 8 (question, answer) pairs
(median of --score-repeats after one warm-up call).

SmolLM2 with LoRA (train_backbone=lora) is not trained here: --lora-probe-steps optimizer steps on
--lora-probe-pairs pairs are timed and the default schedule (steps x batch_size pairs) is extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks._models import machine, md_table  # noqa: E402

EXPERIMENTS = {"rm_orm": "correctness_macro (preference pairs)", "rm_online": "online_rm (online feedback)"}


def smollm2_model_config():
    from quark_lightning.reward_model.rm_settings import compose_experiment

    return compose_experiment("rm_orm", ["model=smollm2"]).model


def score_inputs(n: int) -> tuple[list[dict], list[str]]:
    """n (prompt, answer) pairs from the bundled preference pairs: distinct questions, the first answer."""
    from quark_lightning.data.preferences import load_preference_pairs, question_key

    seen, prompts, answers = set(), [], []
    for pair in load_preference_pairs("bundled"):
        key = question_key(pair["messages"])
        if key not in seen:
            seen.add(key)
            prompts.append({"messages": pair["messages"]})
            answers.append(pair["response_a"])
        if len(prompts) == n:
            break
    return prompts, answers


def time_scoring(scorer, prompts, answers, repeats: int) -> dict[str, float]:
    scorer.score(prompts, answers)  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        scorer.score(prompts, answers)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    tokens = sum(
        len(scorer.model.encode(p["messages"], a, scorer.max_length)) for p, a in zip(prompts, answers)
    )
    return {
        "seconds_median": statistics.median(times),
        "cpu_seconds_median": statistics.median(cpu),
        "seconds_all": times,
        "tokens": tokens,
    }


def run_one(experiment: str, backbone: str, cache: str, args) -> dict:
    from quark_lightning.reward_model.rm_cache import resolved_scorer_config
    from quark_lightning.scorers.orm import ORMScorer

    policy = smollm2_model_config() if backbone == "smollm2" else None
    overrides = ["~logger", *(args.override or [])]
    started, cpu_started = time.perf_counter(), time.process_time()
    config = resolved_scorer_config(  # what the matrix builder does: train once, cache, set `path`
        dict(
            train_experiment=experiment,
            cache_dir=cache,
            backbone="policy" if backbone == "smollm2" else "tiny",
            policy_model=policy,
            train_overrides=overrides,
            batch_size=16,
            max_length=384,  # as conf/matrix/medical.yaml
        )
    )
    scorer = ORMScorer(**config)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    with open(os.path.join(scorer.path, "reward_model.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    summary = meta["summary"]
    after = summary["held_out_metrics_after"]
    prompts, answers = score_inputs(8)
    scoring = time_scoring(scorer, prompts, answers, args.score_repeats)
    params = sum(p.numel() for p in scorer.model.parameters())
    row = {
        "experiment": experiment,
        "backbone": backbone,
        "backbone_model": summary["backbone_model"],
        "train_backbone": summary["train_backbone"],
        "pooling": summary["pooling"],
        "parameters": params,
        "steps": summary["steps"],
        "train_pairs": summary["train_pairs"],
        "held_out_pairs": summary["held_out_pairs"],
        "held_out_before": summary["held_out_metrics_before"],
        "held_out_after": after,
        "tie_delta_over_std": (after["tie_abs_delta"] / after["reward_std"])
        if after.get("tie_abs_delta") is not None and after.get("reward_std")
        else None,
        "feature_texts": summary["feature_texts"],
        "feature_seconds": summary["feature_seconds"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds_build_and_train": round(wall, 1),
        "cpu_seconds_build_and_train": round(cpu, 1),  # process CPU time: what a quiet core would take
        "score_8_answers": scoring,
        "reward_model_dir": scorer.path,
    }
    print(
        f"[{experiment} / {backbone}] pair acc {fmt(after['pair_accuracy'])}  "
        f"tie acc {fmt(after['tie_accuracy'])}  |d| ties {fmt(after['tie_abs_delta'])}  "
        f"features {summary['feature_seconds']}s  "
        f"train {summary['train_seconds']}s  (build+train wall {wall:.0f}s, CPU {cpu:.0f}s)  "
        f"score 8: {scoring['seconds_median']:.3f}s (CPU {scoring['cpu_seconds_median']:.3f}s)",
        flush=True,
    )
    del scorer
    return row


def lora_probe(steps: int, pairs_per_step: int) -> dict:
    """Time `steps` LoRA optimizer steps on SmolLM2 (rm_orm settings) and extrapolate the default schedule."""
    from quark_lightning.data.preferences import pair_texts
    from quark_lightning.reward_model.pair_datasets import PairDataset, pair_rewards
    from quark_lightning.reward_model.rm_backbone import backbone_model_config, build_reward_model
    from quark_lightning.reward_model.rm_settings import compose_experiment, validate_reward_model_config
    from quark_lightning.reward_model.ties_loss import ties_objective
    from quark_lightning.reward_model.training import load_pairs

    cfg = compose_experiment("rm_orm", ["model=smollm2", "reward_model.train_backbone=lora"])
    rm = validate_reward_model_config(cfg)
    train, _, corpus = load_pairs(rm)
    model = build_reward_model(rm, backbone_model_config(cfg), corpus or pair_texts(train))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=rm.lr)
    data = PairDataset(model, train[: steps * pairs_per_step], rm.max_length)
    times = []
    for batch in data.loader(pairs_per_step):
        started = time.perf_counter()
        r_a, r_b = pair_rewards(model, batch)
        loss = ties_objective(
            r_a, r_b, batch["pref"], ties_lambda=rm.ties_lambda, ties_margin=rm.ties_margin
        ).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - started)
    per_pair = statistics.fmean(times) / pairs_per_step
    projected = per_pair * rm.batch_size * rm.steps
    return {
        "steps_timed": len(times),
        "pairs_per_step": pairs_per_step,
        "seconds_per_step": times,
        "seconds_per_pair": per_pair,
        "lora_r": rm.lora.r,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "default_schedule": f"{rm.steps} steps x {rm.batch_size} pairs",
        "projected_minutes": projected / 60,
    }


def fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_markdown(result: dict, path: str) -> None:
    rows = []
    for r in result["runs"]:
        a, score = r["held_out_after"], r["score_8_answers"]
        rows.append(
            [
                r["experiment"],
                f"{r['backbone']} ({r['parameters'] / 1e6:.2f} M, {r['train_backbone']})",
                f"{r['held_out_pairs']} ({int(a['n_ties'])} ties)",
                fmt(a["pair_accuracy"]),
                fmt(a["tie_accuracy"]),
                fmt(a["tie_abs_delta"]),
                fmt(a["reward_std"]),
                fmt(r["tie_delta_over_std"]),
                f"{r['feature_seconds']:.0f} ({r['feature_texts']} texts)" if r["feature_texts"] else "–",
                f"{r['train_seconds']:.0f}",
                f"{r['wall_seconds_build_and_train']:.0f} / {r['cpu_seconds_build_and_train']:.0f}",
                f"{score['seconds_median']:.3f} / {score['cpu_seconds_median']:.3f}",
            ]
        )
    header = [
        "experiment", "backbone (params, training)", "held-out pairs", "pair accuracy", "tie accuracy",
        "mean abs delta on ties", "reward std", "ties delta / std", "features s", "train s",
        "all, wall / CPU s", "score 8 answers, wall / CPU s",
    ]  # fmt: skip
    lines = [
        "# Reward-model backbones: tiny vs SmolLM2-135M-Instruct (frozen features + head)",
        "",
        f"`{result['command']}` — {result['machine']}. Total {result['total_seconds'] / 60:.1f} min"
        + ("" if result["complete"] else " (interrupted: partial results)")
        + "; "
        f"load average (1, 5, 15 min) at start / end {result['loadavg_start']} / {result['loadavg_end']} "
        f"on {os.cpu_count()} cores (a load above {os.cpu_count()} means other jobs shared the cores: wall "
        "times are then upper bounds and this process's CPU times the better guide).",
        "",
        "Held-out split by question of the bundled data, the experiments' default settings "
        "(ties loss λ=0.5, m=0; rm_orm 150 steps, rm_online 100 steps, batch 16 pairs, lr 1e-3), one seed. "
        "Tie accuracy counts |r_1 - r_2| < 0.5, which depends on each model's reward scale; "
        "ties delta / std is scale-free. `features s`: one SmolLM2 forward per distinct text "
        "(train + held-out); "
        "`train s`: the Lightning fit; `all`: building the backbone, caching features, training and saving "
        "(wall clock / this process's CPU time, which is about what a quiet core takes); "
        "`score 8 answers`: `ORMScorer.score` on 8 (question, answer) pairs "
        "(median of repeats after a warm-up), the reward model's cost per 8 completions of a GRPO step.",
        "",
        md_table(header, rows),
        "",
    ]
    no_ties = sorted({r["experiment"] for r in result["runs"] if not r["held_out_after"]["n_ties"]})
    if no_ties:
        lines += [
            f"n/a: the held-out pairs of {', '.join(no_ties)} have no ties (the bundled online feedback has "
            "at most one liked and one disliked answer per question: 80 of its 150 questions give one "
            "preferred pair, none a tie).",
            "",
        ]
    probe = result.get("lora_probe")
    if probe:
        lines += [
            f"SmolLM2 + LoRA (r={probe['lora_r']}, {probe['trainable_parameters'] / 1e6:.2f} M trainable) "
            "was not "
            f"trained: {probe['steps_timed']} optimizer steps of {probe['pairs_per_step']} pairs took "
            f"{', '.join(f'{t:.1f}' for t in probe['seconds_per_step'])} s, "
            f"{probe['seconds_per_pair']:.1f} s per pair, "
            f"so the default schedule ({probe['default_schedule']}) would take about "
            f"{probe['projected_minutes']:.0f} min on this core for rm_orm alone.",
            "",
        ]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--backbones", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--override", nargs="*", help="extra Hydra overrides of both experiments")
    parser.add_argument("--score-repeats", type=int, default=3)
    parser.add_argument("--lora-probe-steps", type=int, default=2, help="0 = skip the LoRA timing")
    parser.add_argument("--lora-probe-pairs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cache",
        default=None,
        help="reward-model cache (default: a fresh temporary one, removed at the end)",
    )
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    cache = args.cache or tempfile.mkdtemp(prefix="rm_backbones-")
    result = {
        "benchmark": "rm_backbones",
        "command": "python benchmarks/rm_backbones.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "loadavg_start": load_start,
        "complete": False,
        "runs": [],
        "lora_probe": None,
    }
    os.makedirs(args.out, exist_ok=True)

    def save() -> None:  # after every run, so an interrupted benchmark keeps what it measured
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        result["total_seconds"] = time.perf_counter() - started
        with open(os.path.join(args.out, "rm_backbones.json"), "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        write_markdown(result, os.path.join(args.out, "rm_backbones.md"))

    for experiment in args.experiments:
        for backbone in args.backbones:
            result["runs"].append(run_one(experiment, backbone, cache, args))
            save()
    if args.lora_probe_steps > 0 and "smollm2" in args.backbones:
        probe = lora_probe(args.lora_probe_steps, args.lora_probe_pairs)
        result["lora_probe"] = probe
        print(
            f"[lora probe] {probe['seconds_per_pair']:.1f} s/pair -> {probe['projected_minutes']:.0f} min",
            flush=True,
        )
    result["complete"] = True
    save()
    if args.cache is None:  # the SmolLM2 reward models are ~0.5 GB each
        shutil.rmtree(cache, ignore_errors=True)
    print(open(os.path.join(args.out, "rm_backbones.md"), encoding="utf-8").read())


if __name__ == "__main__":
    main()
