"""Pinning (golden) test: the numbers of a short GRPO run, per aggregator, must not change.

Written before the reward-shaping ownership refactor (issue 14: normalizer statistics, TADW weights and
their EMA state, closed-loop gains, gates and aggregation move into one object; `model.kind` ladders
become Hydra `instantiate`). That refactor must not change numerics; this test says where they moved.

What runs: the real config path, in-process. `conf/train.yaml` is composed with Hydra's compose API
(`+experiment=smoke` plus `COMMON`: a 1-layer tiny model built offline into a temporary cache, 4 warm-start
steps at lr 0.05 and `format_rules.min_words=10` so the 24-token completions of one group score differently
(non-zero advantages in every step of every arm),
3 RL steps of 2 prompts x 4 completions, no logger / sample callbacks, checkpoints under run_dir), handed to
`quark_lightning.cli.run.run`, as train.py does. The only addition is `PinningRecorder`, appended last to the
trainer's callbacks: it reads the module, it never writes. Arms (`ARM_OVERRIDES`):

    sum        optimization=sum, closed loop off (callbacks.closed_loop=null)
    gdpo       optimization=gdpo, closed loop off
    rfn        optimization=rfn (4 calibration prompts), closed loop off
    rfn_tadw   optimization=rfn_tadw (4 calibration prompts), closed loop ON (update and item level: gains,
               rule / item / prompt weights, curriculum; evaluations at steps 0 and 2 feed steps 1-3), and a
               cap gate on expert_rubric (below 0.1 -> reward at most 0.0) that fires on most completions

What is pinned (golden files: tests/fixtures/pinning/<arm>.json), per arm:

    overrides      the arm's overrides (a changed recipe must regenerate, not pass by accident)
    steps[i]       per RL step, from `module.last_step` at on_train_batch_end:
                     prompt_ids, completions_sha256, completion_lengths (exact: tells a changed rollout,
                     upstream of reward shaping, apart from changed shaping)
                     scores (N, K) raw matrix scores; normalized (N, K) RFN units (rfn, rfn_tadw)
                     weights_used: `module.shaping.weights` at the step's batch start (what it aggregated with)
                     reward (N,) and advantages (N,); the first RL step's advantages are steps[0].advantages
                     logged: every metric the step logged (loss, kl, entropy, grad_norm, clip ratios, reward
                     stats, weights/*, normalized/*, failures, and for TADW its factors tadw/*), but times
                     and sampling/* (the sampler-trainer rounding mismatch) and diagnostics/length_corr/*
                     (added after the goldens; a function of pinned values: scores, weights, lengths)
    normalizer_*   rfn, rfn_tadw: the Reference-Frozen normalizer's buffers (mean, std, count, fitted) and
                   status, after calibration (first batch start) and at the end
    weighting_*    rfn_tadw: the TADW buffers (weights, prior, risk, targets, ema_score, ema_corr, steps,
                   loop_gain) after setup (first batch start) and at the end
    closed_loop    rfn_tadw: the loop's gains, format-rule weights, area weights, rubric-item and prompt
                   weights, mined phrases, and each evaluation's held-out pass rates (state at the end)
    final_matrix_weights, params
                   `module.shaping.weights` after training; the policy's parameters after the last step:
                   count, float64 sum and abs-sum, per-tensor sums, 12 values of 5 tensors

Tolerances (issue 22: the suite must pass on every x86 processor CI may run on). The run is float64
(`trainer.precision=64-true`, infra/precision.py) on a tiny model whose initial weights are the same
bits everywhere (models/tiny.py `grid_init_`). Each quantity is compared by what it goes through:

    exact    integers, booleans, strings, hashes (prompt ids, completions, lengths, statuses, counts)
    PURE     rtol 1e-12: float64 functions of exact inputs (scores of exact texts, rewards, advantages,
             normalizer and TADW buffers, loop weights, pass rates). Another processor may reorder a
             float64 reduction (AVX-512 adds 8 lanes, AVX2 4, scalar 1): a few ulps (2.2e-16 each);
             1e-12 leaves ~4500 ulps and still catches any real change.
    MODEL    rtol 1e-5 (atol 1e-12): every metric the step logged (loss, kl, entropy, grad_norm, ...).
             These pass through the policy's forward, where transformers' Llama computes RMSNorm and the
             rotary cos/sin in float32 whatever the model's dtype, so they carry float32 rounding that
             vectorized kernels round differently. Largest measured spread: 3.6e-7 relative.
    TRAINED  the parameters after 4 warm-start and 3 RL AdamW steps. AdamW divides each gradient by its
             running RMS, so the float32 noise above, in a gradient element close to zero, moves that
             parameter by a small fraction of the learning rate. Single values (slices): rtol 1e-4,
             atol 1e-7 (largest measured spread 7.8e-6 relative, 2.7e-8 absolute); sums over a tensor or
             the model, whose terms cancel: rtol 1e-4, atol 2e-4 (largest measured 1.6e-5 absolute, on
             the 16,384-value embedding).

The spreads were measured on one machine (AMD EPYC) by switching kernels: AVX-512 (native), AVX2
(ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 DNNL_MAX_CPU_ISA=AVX2) and scalar
(`OTHER_KERNELS` below); PURE quantities were bit-identical in all three.
`test_the_golden_run_holds_on_other_kernels` repeats that check for one arm, and
`test_a_small_change_to_one_advantage_is_reported` shows a 1e-6 relative change is still caught.
A failure lists every quantity that diverged, in pipeline order: the first one is where to look.

Regenerate (from a clean checkout of the commit whose numbers are right, on CPU):

    python tests/scripts/make_pinning_golden.py          # runs each arm twice, writes only if equal

RULE: regenerate only on purpose, with the reason stated in the commit message (which change moved which
numbers, and why that is correct). A refactor meant to keep numerics must pass this test unchanged.

Determinism: trainer.deterministic=true, one intra-op thread while the run lasts (restored afterwards),
the config's seed; the result does not depend on PYTHONHASHSEED or on the arms' order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "tests" / "fixtures" / "pinning"
ARMS = ("sum", "gdpo", "rfn", "rfn_tadw")
# (rtol, atol) by what a quantity goes through; the reasons are in the module docstring ("Tolerances")
PURE, MODEL, TRAINED_VALUE, TRAINED_SUM = (1e-12, 1e-15), (1e-5, 1e-12), (1e-4, 1e-7), (1e-4, 2e-4)
# the scalar kernel set: ATen without SIMD, MKL's reproducible code path, oneDNN limited to SSE4.1
OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "DNNL_MAX_CPU_ISA": "SSE41"}
STEPS = 3

COMMON = [
    "+experiment=smoke",
    "~logger",
    f"trainer.max_steps={STEPS}",
    "trainer.deterministic=true",
    "trainer.precision=64-true",  # float64 numerics (infra/precision.py): see "Tolerances"
    "warmstart.steps=4",
    "warmstart.lr=0.05",
    "matrix.dimensions.format_rules.scorer.min_words=10",
    "save_policy=false",
    # callbacks.checkpoint stays (it writes under run_dir): without it Lightning adds its default
    # ModelCheckpoint, which writes into the current directory
    "callbacks.preemption=null",
    "callbacks.samples=null",
    "callbacks.reward_trend=null",
    "rollout.max_new_tokens=24",
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_hidden_layers=1",
]
ARM_OVERRIDES = {
    "sum": ["optimization=sum", "callbacks.closed_loop=null"],
    "gdpo": ["optimization=gdpo", "callbacks.closed_loop=null"],
    "rfn": [
        "optimization=rfn",
        "optimization.normalization.calibration_prompts=4",
        "callbacks.closed_loop=null",
    ],
    "rfn_tadw": [
        "optimization=rfn_tadw",
        "optimization.normalization.calibration_prompts=4",
        "+matrix.dimensions.expert_rubric.gate={below: 0.1, mode: cap, value: 0.0}",
        "callbacks.closed_loop.every_n_steps=2",
        "callbacks.closed_loop.num_prompts=4",
        "callbacks.closed_loop.probe_prompts=4",
        "callbacks.closed_loop.report_dir=null",
    ],
}


# ------------------------------------------------------------------------------------------- recording
def floats(t) -> Any:
    """A tensor / number as (nested) lists of floats (every float64 bit: JSON keeps repr); NaN -> None."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype in (torch.long, torch.int32, torch.bool):
            return t.tolist()
        t = t.double().tolist()
    if isinstance(t, list):
        return [floats(x) for x in t]
    if isinstance(t, float) and not math.isfinite(t):
        return None if math.isnan(t) else str(t)
    return float(t) if isinstance(t, float) else t


def buffers(module: torch.nn.Module | None) -> dict[str, Any] | None:
    if module is None:
        return None
    return {name: floats(b) for name, b in module.named_buffers()}


class PinningRecorder(L.Callback):
    """Reads the module each step; appended last to the trainer's callbacks, changes nothing."""

    def __init__(self):
        self.out: dict[str, Any] = {"steps": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and "normalizer_start" not in self.out:  # after RFN calibration and TADW setup
            self.out["normalizer_start"] = normalizer_state(pl_module.shaping.normalizer)
            self.out["weighting_start"] = weighting_state(pl_module)
        self._weights_used = floats(pl_module.shaping.weights)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rec = pl_module.last_step
        text = "\x1e".join(rec.completions).encode()
        self.out["steps"].append(
            {
                "step": int(rec.step),
                "prompt_ids": [str(p["id"]) for p in rec.prompts],
                "completions_sha256": hashlib.sha256(text).hexdigest(),
                "completion_lengths": [len(c) for c in rec.completions],
                "scores": floats(rec.scores),
                "weights_used": self._weights_used,
                "reward": floats(rec.reward),
                "normalized": floats(rec.normalized) if rec.normalized is not None else None,
                "advantages": floats(rec.advantages),
                "logged": logged_metrics(trainer),
            }
        )

    def on_train_end(self, trainer, pl_module):
        self.out["normalizer_end"] = normalizer_state(pl_module.shaping.normalizer)
        self.out["weighting_end"] = weighting_state(pl_module)
        self.out["final_matrix_weights"] = floats(pl_module.shaping.weights)
        self.out["params"] = param_summary(pl_module.policy)
        loop = next((c for c in trainer.callbacks if type(c).__name__ == "ClosedLoopSupervision"), None)
        self.out["closed_loop"] = closed_loop_state(loop, pl_module) if loop is not None else None


def logged_metrics(trainer) -> dict[str, Any]:
    """What the module and the TADW callback logged this step, but wall times, the progress bar and the
    sampler-trainer mismatch (`sampling/*`: rounding noise between the decode loop and the full forward,
    about 1e-8 here, which another processor's kernels change by more than any tolerance of its size), and
    `diagnostics/length_corr/*`, logged since the goldens were recorded and computed from pinned values."""
    skip = ("time/", "step_time", "reward_pbar", "sampling/", "diagnostics/length_corr/")
    return {
        k: floats(float(v)) for k, v in sorted(trainer.callback_metrics.items()) if not k.startswith(skip)
    }


def weighting_state(pl_module) -> dict[str, Any] | None:
    """The TADW buffers, with the loop gain: since issue 14 the gain is RewardShaping's `loop_gain` (one
    buffer for every aggregator), not a TADW buffer; it is pinned where the golden run kept it."""
    state = buffers(pl_module.shaping.weighting)
    if state is not None and "loop_gain" not in state:
        state["loop_gain"] = floats(pl_module.shaping.loop_gain)
    return state


def normalizer_state(norm) -> dict[str, Any] | None:
    if norm is None:
        return None
    state = buffers(norm)
    state["status"] = list(norm.status)
    return state


def closed_loop_state(loop, pl_module) -> dict[str, Any]:
    # RewardShaping owns the loop's reward state (issue 25): its loop_gain buffer and its LoopState; the
    # callback keeps only its report record (`history`)
    gain = pl_module.shaping.loop_gain.tolist()
    state = pl_module.shaping.loop
    return {
        "gain": floats(list(gain)),
        "rule_weights": {
            d: {r: floats(float(w)) for r, w in sorted(v.items())}
            for d, v in sorted(state.rule_weights.items())
        },
        "area_weights": {a: floats(float(w)) for a, w in sorted(state.area_weights.items())},
        "item_weights": {
            d: {p: {i: floats(float(w)) for i, w in sorted(items.items())} for p, items in sorted(v.items())}
            for d, v in sorted(state.item_weights.items())
        },
        "prompt_weights": {p: floats(float(w)) for p, w in sorted(state.prompt_weights.items())},
        "loop_patterns": {d: sorted(p) for d, p in sorted(state.loop_patterns.items())},
        "evaluations": [
            {
                "step": int(h["step"]),
                "pass_rates": {n: floats(float(r["pass_rate"])) for n, r in sorted(h["dimensions"].items())},
            }
            for h in loop.history
        ],
    }


def param_summary(policy: torch.nn.Module) -> dict[str, Any]:
    named = [(n, p.detach().cpu().double()) for n, p in policy.named_parameters()]
    total = sum(float(p.sum()) for _, p in named)
    abs_total = sum(float(p.abs().sum()) for _, p in named)
    slices = {}
    for n, p in named[:3] + named[-2:]:
        flat = p.flatten()
        slices[n] = floats(torch.cat([flat[:4], flat[flat.numel() // 2 : flat.numel() // 2 + 4], flat[-4:]]))
    return {
        "count": sum(p.numel() for _, p in named),
        "sum": floats(total),
        "abs_sum": floats(abs_total),
        "per_tensor_sum": {n: floats(float(p.sum())) for n, p in named},
        "slices": slices,
    }


# ------------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def quiet_and_isolated():
    """One intra-op thread (the number changes fp32 reduction order); global torch flags restored."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def compose_arm(arm: str, run_dir: Path, cache_dir: Path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train",
            [*COMMON, *ARM_OVERRIDES[arm], f"run_dir={run_dir}", f"model.cache_dir={cache_dir}"],
        )


def run_arm(arm: str, work: Path) -> dict[str, Any]:
    """One run of the arm through quark_lightning.cli.run.run; what the recorder saw."""
    import quark_lightning.cli.run as run_mod

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = compose_arm(arm, work / arm, work / "cache")
    recorder = PinningRecorder()
    original = run_mod.build_callbacks

    def with_recorder(cfg):
        return [*original(cfg), recorder]

    run_mod.build_callbacks = with_recorder
    try:
        with quiet_and_isolated():
            run_mod.run(cfg)
    finally:
        run_mod.build_callbacks = original
    return {"overrides": [*COMMON, *ARM_OVERRIDES[arm]], **recorder.out}


# ------------------------------------------------------------------------------------------- comparing
def leaves(x: Any, at: str = "") -> list[tuple[str, Any]] | None:
    """(index, value) of every number of a (nested) list of numbers / None, or None for anything else."""
    if isinstance(x, list):
        out = []
        for i, v in enumerate(x):
            sub = leaves(v, f"{at}[{i}]")
            if sub is None:
                return None
            out += sub
        return out
    return [(at, x)] if x is None or isinstance(x, (int, float)) else None


def tolerance(path: str) -> tuple[float, float]:
    """(rtol, atol) of the quantity at `path` (module docstring, "Tolerances")."""
    if path.startswith("params"):
        return TRAINED_VALUE if path.startswith("params/slices") else TRAINED_SUM
    return MODEL if "/logged/" in path else PURE


def same(golden: Any, actual: Any, tol: tuple[float, float] = PURE) -> bool:
    """Floats within tol (rtol, atol); integers, booleans, strings, None exactly."""
    if isinstance(golden, float) or isinstance(actual, float):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (golden, actual))
        return numbers and math.isclose(actual, golden, rel_tol=tol[0], abs_tol=tol[1])
    return type(golden) is type(actual) and golden == actual


def diff(golden: Any, actual: Any, path: str = "") -> list[str]:
    """One line per quantity (a tensor, a scalar, a string) where actual departs from golden."""
    if isinstance(golden, dict) and isinstance(actual, dict):
        out = []
        for key in [*golden, *(k for k in actual if k not in golden)]:
            if key not in actual or key not in golden:
                out.append(f"{path}/{key}: {'missing' if key not in actual else 'unexpected'}")
            else:
                out += diff(golden[key], actual[key], f"{path}/{key}")
        return out
    tol = tolerance(path.lstrip("/"))
    if isinstance(golden, list) and isinstance(actual, list):
        g, a = leaves(golden), leaves(actual)
        if g is None or a is None:  # a list of records (steps, evaluations)
            if len(golden) != len(actual):
                return [f"{path}: length {len(actual)} != golden {len(golden)}"]
            return [
                line for i, (x, y) in enumerate(zip(golden, actual)) for line in diff(x, y, f"{path}[{i}]")
            ]
        if [i for i, _ in g] != [i for i, _ in a]:
            return [f"{path}: shape differs: {actual!r} != golden {golden!r}"]
        bad = [(i, x, y) for (i, x), (_, y) in zip(g, a) if not same(x, y, tol)]
        if not bad:
            return []
        i, x, y = bad[0]
        return [f"{path}: {len(bad)} of {len(g)} values differ; first {path}{i}: {y!r} != golden {x!r}"]
    return [] if same(golden, actual, tol) else [f"{path}: {actual!r} != golden {golden!r}"]


ORDER = (  # pipeline order: the first quantity that diverged is where to look
    "overrides",
    "normalizer_start",
    "weighting_start",
    "steps",
    "closed_loop",
    "normalizer_end",
    "weighting_end",
    "final_matrix_weights",
    "params",
)


def golden(arm: str) -> dict[str, Any]:
    path = GOLDEN_DIR / f"{arm}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: python tests/scripts/make_pinning_golden.py")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("pinning")


def divergences(arm: str, actual: dict[str, Any]) -> list[str]:
    """Every quantity of `actual` (after the JSON round trip the golden file took) that departs from the
    arm's golden file, in pipeline order."""
    expected = golden(arm)
    problems = []
    for key in sorted(expected.keys() | actual.keys(), key=lambda k: ORDER.index(k) if k in ORDER else 99):
        problems += diff(expected.get(key), actual.get(key), key)
    return problems


def fail_with(arm: str, problems: list[str], where: str = "") -> None:
    if problems:
        pytest.fail(
            f"arm {arm}{where}: {len(problems)} quantities diverged from {GOLDEN_DIR.name}/{arm}.json, in "
            "pipeline order (the first is where to look):\n  " + "\n  ".join(problems[:40]),
            pytrace=False,
        )


@pytest.mark.parametrize("arm", ARMS)
def test_numerics_match_the_golden_run(arm, work):
    actual = json.loads(json.dumps(run_arm(arm, work)))
    fail_with(arm, divergences(arm, actual))


def test_the_golden_run_holds_on_other_kernels(tmp_path):
    """The richest arm (rfn_tadw: RFN, TADW, gate, closed loop) in a fresh process on the scalar kernel set
    (`OTHER_KERNELS`): what another x86 processor computes differently, computed differently here."""
    out = tmp_path / "rfn_tadw.json"
    env = {**os.environ, **OTHER_KERNELS, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    script = REPO / "tests" / "scripts" / "make_pinning_golden.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "rfn_tadw"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fail_with("rfn_tadw", divergences("rfn_tadw", json.loads(out.read_text())), f" under {OTHER_KERNELS}")


def test_a_small_change_to_one_advantage_is_reported(work, monkeypatch):
    """Multiply the largest advantage of the first RL step by (1 + 1e-6): the comparison must name the
    advantages of that step (PURE: caught at 1e-12) and nothing upstream of them."""
    from quark_lightning.grpo.grpo_module import GRPOModule

    original, calls = GRPOModule.shape_rewards, []

    def nudged(self, *args, **kwargs):
        scores, aggregated, advantages, frac_zero_std = original(self, *args, **kwargs)
        if not calls:
            i = int(advantages.abs().argmax())
            assert float(advantages[i]) != 0.0, "the pinned run needs a non-zero advantage in step 1"
            advantages = advantages.clone()
            advantages[i] *= 1 + 1e-6
        calls.append(1)
        return scores, aggregated, advantages, frac_zero_std

    monkeypatch.setattr(GRPOModule, "shape_rewards", nudged)
    problems = divergences("sum", json.loads(json.dumps(run_arm("sum", work / "nudged"))))
    assert problems, "a 1e-6 relative change to one advantage went unreported"
    assert problems[0].startswith("steps[0]/advantages: 1 of 8 values differ"), problems[:3]
