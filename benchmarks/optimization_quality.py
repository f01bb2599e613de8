"""Optimization-quality benchmark: sum vs gdpo vs rfn vs rfn_tadw on a controlled multi-objective task.

    python benchmarks/optimization_quality.py            # writes benchmarks/results/optimization_quality.{json,md}

The task (why a categorical policy): each of P prompts has C fixed candidate answers; the policy is a
categorical distribution over them (a logits table), initialised at the frozen reference. The rewards can
move it within seconds on a CPU, every expectation under the policy is exact (no sampling noise in the
evaluation), and the aggregators are the only thing that differs, so the mechanism shows clearly. The
same code paths as the trainer are used: `aggregate_and_advantages`, `ReferenceFrozenNormalizer`,
`TriFactorWeighting`, the GRPO group advantages and the k3 KL.

Five dimensions whose raw scales differ by 3000x:
  orm          Bradley-Terry-like logit, scale ~30, unbounded (risk 2)
  rubric       rubric score in [0, 1] (risk 2)
  safety       {-0.01, 0} penalty: the smallest scale and the highest risk (risk 3); anti-correlated with the
               ORM latent (confident answers are more often unsafe), so optimizing the ORM alone hurts it
  format       binary rule {0, 1} (risk 1)
  rubric_copy  an exact duplicate of `rubric` (risk 2)
Static weights are all 1 (what a user writes first). Each run: RFN calibrated on G samples per prompt from
the reference, then T GRPO steps (G samples per prompt, beta 0.01, Adam). Several seeds; the aggregators
run interleaved within each seed, from the same initial policy and the same sampling seed.

Reported per aggregator (mean over seeds):
  improvement_k   (E_pi[r_k] - E_ref[r_k]) / std_ref(r_k): gain in reference standard deviations, exact
  worst           min_k improvement_k over the distinct dimensions
  adv_share_k     share of the advantage signal driven by dimension k: Var(c_k) / sum_j Var(c_j), where c_k is
                  dimension k's additive, group-centred contribution to the (pre-normalization) aggregate;
                  averaged over steps
  final weights   the weights in force at the end (normalized to sum 1)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass

import torch

from quark_lightning.grpo.loss import k3_kl
from quark_lightning.shaping.aggregation import AggregationContext, aggregate_and_advantages, group_advantages
from quark_lightning.shaping.rfn import ReferenceFrozenNormalizer
from quark_lightning.shaping.tadw import TriFactorWeighting

NAMES = ["orm", "rubric", "safety", "format", "rubric_copy"]
RISK = [2.0, 2.0, 3.0, 1.0, 2.0]
TARGETS = [None, 0.7, 0.0, 1.0, 0.7]
DISTINCT = [0, 1, 2, 3]  # rubric_copy is rubric
AGGREGATORS = ["sum", "gdpo", "rfn", "rfn_tadw", "rfn_tadw_v1"]
# rfn_tadw: the second edition as conf/optimization/rfn_tadw.yaml sets it (target-gap weakness against the
# targets, the rubric's expert level for the target-less ORM, start from the calibration batch, zero weight
# for dimensions that cannot move an advantage, eta 0.3, batch scaling, Bernoulli fallback sigma);
# rfn_tadw_v1: the first edition (softmax weakness, risk-prior start, eta 0.1, group scaling, sigma 1).
SECOND_EDITION = {"weakness_mode": "target_gap", "eta": 0.3}
SCALE = {"rfn": "batch", "rfn_tadw": "batch"}


@dataclass
class Task:
    scores: torch.Tensor  # (P, C, K) raw scores of every candidate
    ref_logits: torch.Tensor  # (P, C)


def make_task(num_prompts: int, num_candidates: int, seed: int) -> Task:
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(num_prompts, num_candidates, 4, generator=g)  # (P, C, 4)
    orm_l, rub_l, fmt_l = latent[..., 0], latent[..., 1], latent[..., 3]
    safety_l = -0.6 * orm_l + 0.8 * latent[..., 2]  # confident (high-ORM) answers are more often unsafe
    scores = torch.stack(
        [
            30.0 * orm_l,
            torch.sigmoid(1.5 * rub_l),
            -0.01 * (safety_l < -0.4).float(),
            (fmt_l > 0.3).float(),
            torch.sigmoid(1.5 * rub_l),
        ],
        dim=-1,
    )
    ref_logits = 0.5 * torch.randn(num_prompts, num_candidates, generator=g)
    return Task(scores=scores, ref_logits=ref_logits)


def expected_scores(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Exact E_pi[r_k], averaged over prompts.  (P, C), (P, C, K) -> (K,)"""
    probs = torch.softmax(logits, dim=-1)
    return (probs.unsqueeze(-1) * scores).sum(1).mean(0)


def reference_std(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Exact std of r_k under the reference (pooled over prompts).  -> (K,)"""
    probs = torch.softmax(logits, dim=-1).unsqueeze(-1)
    mean = (probs * scores).sum(1, keepdim=True)  # (P, 1, K)
    within = (probs * (scores - mean) ** 2).sum(1)  # (P, K)
    total = within.mean(0) + mean.squeeze(1).var(0, unbiased=False)
    return total.sqrt()


def sample(logits: torch.Tensor, group: int, g: torch.Generator) -> torch.Tensor:
    """G candidate indices per prompt.  (P, C) -> (P, G)"""
    return torch.multinomial(torch.softmax(logits, -1), group, replacement=True, generator=g)


def contributions(name: str, scores: torch.Tensor, z: torch.Tensor | None, weights: torch.Tensor, G: int):
    """Each dimension's additive contribution to the pre-normalization aggregate.  -> (N, K)"""
    x = scores if name in ("sum", "gdpo") else z
    grouped = x.view(-1, G, x.size(1))
    centered = (grouped - grouped.mean(1, keepdim=True)).view_as(x)
    if name == "gdpo":
        per_dim = torch.stack([group_advantages(x[:, k], G).advantages for k in range(x.size(1))], 1)
        return per_dim * weights
    return centered * weights


def advantage_shares(contrib: torch.Tensor) -> torch.Tensor:
    """Var(c_k) / sum_j Var(c_j): how much of the advantage signal each dimension drives.  (N, K) -> (K,)"""
    var = contrib.var(0, unbiased=False)
    if var.sum() < 1e-12:
        return torch.full((contrib.size(1),), float("nan"))
    return var / var.sum()


def train(name: str, task: Task, steps: int, group: int, lr: float, beta: float, seed: int) -> dict:
    P, C, K = task.scores.shape
    logits = torch.nn.Parameter(task.ref_logits.clone())
    opt = torch.optim.Adam([logits], lr=lr)
    g = torch.Generator().manual_seed(seed + 1000)
    weights = torch.ones(K)
    normalizer = tadw = None
    aggregator = "rfn_tadw" if name == "rfn_tadw_v1" else name
    if aggregator in ("rfn", "rfn_tadw"):  # calibrate on the reference's own samples, then freeze
        idx = sample(task.ref_logits, group, g)
        normalizer = ReferenceFrozenNormalizer(K, fallback_std=1.0 if name == "rfn_tadw_v1" else "bernoulli")
        calib = torch.gather(task.scores, 1, idx.unsqueeze(-1).expand(-1, -1, K)).reshape(-1, K)
        normalizer.fit(calib)
    if name == "rfn_tadw_v1":
        tadw = TriFactorWeighting(risk=RISK, targets=TARGETS)
        target_z = (tadw.targets - normalizer.mean) / (normalizer.std + normalizer.eps)
        weights = tadw.weights.clone()
    if name == "rfn_tadw":
        tadw = TriFactorWeighting(risk=RISK, targets=TARGETS, **SECOND_EDITION)
        target_z = (tadw.targets - normalizer.mean) / (normalizer.std + normalizer.eps)
        expert = task.scores[torch.arange(P), task.scores[:, :, 1].argmax(1)]  # (P, K) best-rubric answer
        tadw.initialize(normalizer(calib), calib, group, target_z, normalizer(expert))
        weights = tadw.weights.clone()
    shares = []
    for _ in range(steps):
        idx = sample(logits.detach(), group, g)  # (P, G)
        raw = torch.gather(task.scores, 1, idx.unsqueeze(-1).expand(-1, -1, K)).reshape(-1, K)  # (N, K)
        ctx = AggregationContext(group_size=group, normalizer=normalizer)
        agg, adv, _ = aggregate_and_advantages(aggregator, raw, weights, ctx, SCALE.get(name, "group"))
        used = agg.weights if agg.weights is not None else weights
        shares.append(advantage_shares(contributions(aggregator, raw, agg.normalized, used, group)))
        logp = torch.log_softmax(logits, -1)
        logp_taken = torch.gather(logp, 1, idx).reshape(-1)  # (N,)
        ref_logp = torch.gather(torch.log_softmax(task.ref_logits, -1), 1, idx).reshape(-1)
        loss = (-adv * logp_taken + beta * k3_kl(logp_taken, ref_logp)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if tadw is not None:
            tadw.update(agg.normalized, raw, target_z, group_size=group if name == "rfn_tadw" else None)
            weights = tadw.weights.clone()
    ref_mean = expected_scores(task.ref_logits, task.scores)
    gain = (expected_scores(logits.detach(), task.scores) - ref_mean) / reference_std(
        task.ref_logits, task.scores
    )
    share = torch.nanmean(torch.stack(shares), 0)
    return {
        "improvement": gain.tolist(),
        "worst": float(gain[DISTINCT].min()),
        "adv_share": share.tolist(),
        "final_weights": (weights / weights.sum()).tolist(),
    }


def mean_rows(rows: list[dict]) -> dict:
    out = {}
    for key in rows[0]:
        vals = [r[key] for r in rows]
        out[key] = (
            [sum(v) / len(v) for v in zip(*vals)] if isinstance(vals[0], list) else sum(vals) / len(vals)
        )
    out["worst_per_seed"] = [r["worst"] for r in rows]
    return out


def per_dimension_table(results: dict, label: str, key: str, fmt: str) -> list[str]:
    """A blank line, then one row per aggregator of `results[name][key]` (one value per dimension)."""
    lines = [
        "",
        "| aggregator | " + " | ".join(f"{label} {n}" for n in NAMES) + " |",
        "|---|" + "---:|" * len(NAMES),
    ]
    for name in AGGREGATORS:
        lines.append(f"| {name} | " + " | ".join(fmt.format(v) for v in results[name][key]) + " |")
    return lines


def markdown(results: dict, config: dict) -> str:
    lines = [
        "| aggregator | "
        + " | ".join(f"gain {n}" for n in NAMES)
        + " | worst gain | rfn_tadw worst / this worst | rfn_tadw worst - this worst |",
        "|---|" + "---:|" * (len(NAMES) + 3),
    ]
    best = results["rfn_tadw"]["worst"]
    for name in AGGREGATORS:
        r = results[name]
        ratio = best / r["worst"] if r["worst"] > 0 else float("nan")
        ratio_txt = f"{ratio:.2f}x" if not math.isnan(ratio) else "n/a (this worst <= 0)"
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v:+.3f}" for v in r["improvement"])
            + f" | {r['worst']:+.3f} | {ratio_txt} | {best - r['worst']:+.3f} |"
        )
    lines += per_dimension_table(results, "adv share", "adv_share", "{:.2f}")
    lines += per_dimension_table(results, "final w", "final_weights", "{:.3f}")
    lines += [
        "",
        "Gains are in reference standard deviations of each dimension's raw score (exact expectations, "
        f"mean of {config['seeds']} seeds); the worst gain is over the distinct dimensions (rubric_copy is rubric). "
        "The ratio is undefined when this aggregator's worst gain is not positive; the difference is always given.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = vars(args).copy()
    per_agg: dict[str, list[dict]] = {n: [] for n in AGGREGATORS}
    start = time.perf_counter()
    for seed in range(args.seeds):
        task = make_task(args.prompts, args.candidates, seed)
        for name in AGGREGATORS:  # interleaved: same task, same initial policy, same sampling seed
            per_agg[name].append(train(name, task, args.steps, args.group, args.lr, args.beta, seed))
    results = {n: mean_rows(rows) for n, rows in per_agg.items()}
    for n in AGGREGATORS:
        r = results[n]
        r["worst_ratio_rfn_tadw_over_this"] = (
            results["rfn_tadw"]["worst"] / r["worst"] if r["worst"] > 0 else None
        )
    config["wall_seconds"] = round(time.perf_counter() - start, 1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "optimization_quality.json"), "w") as fh:
        json.dump({"config": config, "dimensions": NAMES, "risk": RISK, "results": results}, fh, indent=2)
    table = markdown(results, config)
    with open(os.path.join(args.out, "optimization_quality.md"), "w") as fh:
        fh.write(
            f"# Optimization quality: sum vs gdpo vs rfn vs rfn_tadw\n\nCommand: `python benchmarks/"
            f"optimization_quality.py` ({config['wall_seconds']} s)\n\n{table}\n"
        )
    print(table)


if __name__ == "__main__":
    main()
