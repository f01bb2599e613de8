"""Held-out evaluation of a trained arm, as benchmarks/closed_loop.py runs it: greedy answers to the
training data's held-out split (`data.val_fraction`, never trained on), scored by the full `medical`
matrix; plus the subprocess runner and the table helpers it shares.

(The first edition of benchmarks/efficacy_real.py used these; its second edition evaluates on the
never-trained questions of data/assets/eval_questions.jsonl instead.)
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
EVAL_MATRIX = "medical"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name="train", overrides=overrides)


def arm_name(matrix: str, aggregator: str, seed: int) -> str:
    return f"{matrix}-{aggregator}-s{seed}"


def run_training(run_dir: Path, command: list[str], env: dict[str, str] | None = None) -> Path:
    """One arm's `train.py` subprocess: resumed from its last checkpoint when one exists, logged to
    `train.log`, marked done with its wall time in `train.done` (so a rerun skips it)."""
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        command = [*command, "ckpt_path=last"]
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[train] {run_dir.name}: {' '.join(command[2:])}", flush=True)
    t0 = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0 or not (run_dir / "policy").exists():
        raise SystemExit(
            f"training {run_dir.name} failed (exit {done.returncode}); see {run_dir / 'train.log'}"
        )
    (run_dir / "train.done").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return run_dir


def final_weights(run_dir: Path, names: list[str]) -> dict[str, float] | None:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        return None
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = state.get("matrix_weights")
    return None if weights is None else {n: float(w) for n, w in zip(names, weights.tolist())}


def heldout_eval(cfg, policy_path: str | None, out_file: Path, batch_size: int = 8) -> dict[str, Any]:
    """Greedy answers to the held-out split, scored by the full matrix; cached in `out_file`."""
    if out_file.exists():
        return json.loads(out_file.read_text())
    from hydra.utils import instantiate

    from quark_lightning.cli.run import build_datamodule
    from quark_lightning.evaluation.evaluate_models import load_for_eval
    from quark_lightning.loop.metrics import evaluation_metrics, pass_mask
    from quark_lightning.matrix.build import build_matrix

    datamodule = build_datamodule(cfg)
    records = datamodule.load()
    datamodule.setup("fit")
    prompts = datamodule.val_records()  # the split training never draws from
    matrix = build_matrix(cfg.matrix)
    engine = instantiate(cfg.rollout)
    loaded, _ = load_for_eval("policy", policy_path, cfg.model, records)
    loaded.model.eval()
    answers: list[str] = []
    truncated: list[bool] = []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        rollout = engine.generate(
            loaded.model, loaded.tokenizer, prompts[start : start + batch_size], 1, greedy=True
        )
        answers += rollout.completions
        truncated += [bool(t) for t in rollout.truncated]
    seconds = time.perf_counter() - t0
    scored = matrix.score(prompts, answers)
    metrics = evaluation_metrics(matrix, prompts, answers, scored)
    passed = pass_mask(scored.scores.float(), [d.target for d in matrix.dimensions])
    triage = matrix.names.index("triage") if "triage" in matrix.names else None  # scorers/triage.py
    red = [i for i, p in enumerate(prompts) if p.get("red_flags")] if triage is not None else []
    result = {
        "policy": policy_path or "base",
        "num_prompts": len(prompts),
        "dimensions": metrics["dimensions"],
        "categories": metrics["categories"],
        "red_flag_prompts": len(red),
        "red_flag_triage_rate": (sum(bool(passed[i, triage]) for i in red) / len(red)) if red else math.nan,
        "truncated_rate": sum(truncated) / len(truncated),
        "answer_seconds": seconds,
        "samples": [
            {"id": p["id"], "answer": a, "scores": [None if math.isnan(v) else v for v in row]}
            for p, a, row in zip(prompts, answers, scored.scores.tolist())
        ],
        "dimension_names": matrix.names,
    }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=1))
    del loaded
    return result


def spread(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    mean = statistics.fmean(vals)
    return f"{mean:.3f}" if len(vals) == 1 else f"{mean:.3f} ({min(vals):.2f}..{max(vals):.2f})"


def pct(values: list[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    mean = 100 * statistics.fmean(vals)
    return f"{mean:.0f}%" if len(vals) == 1 else f"{mean:.0f}% ({100 * min(vals):.0f}..{100 * max(vals):.0f})"


def worst_change(arm: dict, base: dict) -> tuple[str, float]:
    changes = {
        n: arm["dimensions"][n]["pass_rate"] - row["pass_rate"]
        for n, row in base["dimensions"].items()
        if not math.isnan(row["pass_rate"]) and not math.isnan(arm["dimensions"][n]["pass_rate"])
    }
    name = min(changes, key=changes.get)
    return name, changes[name]
