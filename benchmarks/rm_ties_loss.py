"""ORM ties-loss benchmark: what L_same does to held-out tie pairs, vs plain Bradley–Terry and vs the literal form.

    python benchmarks/rm_ties_loss.py                 # writes benchmarks/results/rm_ties_loss.{json,md}
    python benchmarks/rm_ties_loss.py --seeds 0 --steps 100 --data /path/pairs.jsonl

Each variant is a full `stage=reward_model` run through the real code path (`run_reward_model` on the
composed `+experiment=rm_orm` config: tiny model, bundled preference pairs, held-out split by question),
in-process, the variants interleaved within each seed (same backbone init, same split, same batches):

  bt        ties_lambda=0                           plain Bradley–Terry, tie pairs ignored
  ties      ties_lambda=<lam>, margin form          L_same = −log σ(m − |Δ|): pulls ties together (default)
  literal   ties_lambda=<lam>, literal_paper_form   L_same = −log σ(|Δ|): the public transcription

Reported per variant (mean ± std over seeds, held-out split): pair accuracy (preferred pairs ranked right),
tie accuracy (|Δ| < tie_threshold), mean |Δ| on ties, reward std, and |Δ|_ties / std — the tie gap in
units of the model's own reward spread, which separates "ties pulled together" from "all scores shrunk".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
METRICS = ["pair_accuracy", "tie_accuracy", "tie_abs_delta", "reward_std", "tie_delta_over_std"]


def variants(lam: float) -> dict[str, list[str]]:
    return {
        "bt": ["reward_model.ties_lambda=0"],
        "ties": [f"reward_model.ties_lambda={lam}"],
        "literal": [f"reward_model.ties_lambda={lam}", "reward_model.literal_paper_form=true"],
    }


def run_variant(overrides: list[str], run_dir: str) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from quark_lightning.reward_model.training import run_reward_model

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose("train", ["+experiment=rm_orm", f"run_dir={run_dir}", "~logger", *overrides])
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_reward_model(cfg)
    after = dict(result["after"])
    after["tie_delta_over_std"] = after["tie_abs_delta"] / after["reward_std"]
    return after


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lam", type=float, default=0.5)
    parser.add_argument("--data", default="bundled")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants(args.lam)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, overrides in variants(args.lam).items():
                common = [
                    f"seed={seed}",
                    f"reward_model.split_seed={seed}",
                    f"reward_model.steps={args.steps}",
                    f"reward_model.data_path={args.data}",
                ]
                t0 = time.perf_counter()
                metrics = run_variant(common + overrides, os.path.join(tmp, f"{name}-{seed}"))
                runs[name].append(metrics)
                shown = "  ".join(f"{k}={metrics[k]:.3f}" for k in METRICS)
                print(f"seed {seed} {name:<8} {shown}  ({time.perf_counter() - t0:.0f}s)", flush=True)

    summary = {name: {k: mean_std([r[k] for r in rs]) for k in METRICS} for name, rs in runs.items()}
    payload = {
        "config": {**vars(args), "experiment": "rm_orm"},
        "seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
        "summary": summary,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rm_ties_loss.json"), "w") as fh:
        json.dump(payload, fh, indent=2)
    header = (
        "| variant | pair accuracy | tie accuracy | mean abs delta on ties | reward std | ties delta / std |"
    )
    lines = [
        f"ORM ties loss on the held-out split of `--data {args.data}` ({len(args.seeds)} seeds, {args.steps} steps, "
        f"lambda={args.lam}, tiny model; mean ± std over seeds). `python benchmarks/rm_ties_loss.py`",
        "",
        header,
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "bt": "Bradley–Terry (λ=0)",
        "ties": f"ties loss, margin form (λ={args.lam})",
        "literal": f"literal paper form (λ={args.lam})",
    }
    for name, stats in summary.items():
        cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in (stats[k] for k in METRICS))
        lines.append(f"| {labels[name]} | {cells} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "rm_ties_loss.md"), "w") as fh:
        fh.write(table)
    print("\n" + table)


if __name__ == "__main__":
    main()
