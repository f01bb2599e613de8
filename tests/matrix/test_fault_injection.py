"""Faulty reward sources: scorers that raise, return NaN / inf / the wrong shape, or hang.

The run keeps going under each dimension's `on_failure` policy, failures are counted per dimension and
logged, a dimension failing on most samples stops the run naming it, and a gate never passes a sample
because its scorer failed.
"""

from __future__ import annotations

import csv
import math
import threading
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from quark_lightning.data.datamodule import PromptDataModule
from quark_lightning.grpo.grpo_module import GRPOConfig, GRPOModule
from quark_lightning.infra.errors import ConfigError, QuarkError
from quark_lightning.matrix import AlignmentMatrix, Dimension
from quark_lightning.matrix.alignment_matrix import ScorerFailureError
from quark_lightning.matrix.build import build_matrix
from quark_lightning.matrix.dimension import FailurePolicy, Gate
from quark_lightning.models.loading import load_causal_lm
from quark_lightning.rollout.hf_generate import HFGenerateEngine
from quark_lightning.scorers.format import FormatScorer
from quark_lightning.scorers.interface import ScoreResult
from quark_lightning.shaping.aggregation import AggregationContext, aggregate_and_advantages

NAN = float("nan")


# ------------------------------------------------------------------ fault-injecting scorers
class FaultyScorer:
    """Scores 1.0, except where `fault(text)` says otherwise: 'raise', 'nan', 'inf', 'hang'.

    `hang` waits on `release` (set it to let abandoned threads finish); `waiting` counts the calls blocked
    there right now, so a test can show that scoring returned without waiting for them (no wall-clock
    assertion). Records every call's size."""

    def __init__(self, fault=lambda text: None, hang_s: float = 60.0):
        self.fault = fault
        self.release = threading.Event()
        self.hang_s = hang_s
        self.calls: list[int] = []
        self.waiting = 0
        self._lock = threading.Lock()

    def score(self, prompts, completions) -> ScoreResult:
        self.calls.append(len(completions))
        scores = []
        for text in completions:
            kind = self.fault(text)
            if kind == "raise":
                raise ValueError(f"judge crashed on {text!r}")
            if kind == "hang":
                with self._lock:
                    self.waiting += 1
                self.release.wait(self.hang_s)
                with self._lock:
                    self.waiting -= 1
            scores.append({"nan": NAN, "inf": math.inf}.get(kind, 1.0))
        return ScoreResult.from_lists(scores, [[] for _ in completions])


def batch(n: int, bad: set[int] = frozenset()) -> tuple[list[dict], list[str]]:
    prompts = [{"id": f"p{i}"} for i in range(n)]
    return prompts, [f"BAD answer {i}" if i in bad else f"answer {i}" for i in range(n)]


def matrix_of(scorer, **policy) -> AlignmentMatrix:
    return AlignmentMatrix([Dimension("judge", "fundamental", scorer, on_failure=policy)])


def on_bad(kind: str):
    return lambda text: kind if text.startswith("BAD") else None


# ------------------------------------------------------------------ the guard
def test_scorer_raising_on_10_percent_fails_10_percent_not_the_batch():
    scorer = FaultyScorer(on_bad("raise"))
    matrix = matrix_of(scorer, policy="nan")
    prompts, completions = batch(20, bad={3, 17})
    with pytest.warns(RuntimeWarning, match=r"matrix dimension 'judge'.*failed on 2/20 samples.*p3"):
        out = matrix.score(prompts, completions)
    assert out.failures == {"judge": 2}
    assert out.failed[:, 0].nonzero().flatten().tolist() == [3, 17]
    col = out.column("judge")
    assert torch.isnan(col[[3, 17]]).all() and (col[~out.failed[:, 0]] == 1.0).all()
    assert out.findings["judge"][3] == ["scorer failed: raised ValueError: judge crashed on 'BAD answer 3'"]
    assert "judge crashed" in out.errors["judge"]
    assert scorer.calls == [20] + [1] * 20  # the batch, then one call per sample to isolate the faults
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is printed once per dimension, then only counted
        assert matrix.score(prompts, completions).failures == {"judge": 2}
    assert matrix.guards["judge"].total_failures == 4


def test_nan_is_not_applicable_unless_the_dimension_applies_to_every_sample():
    prompts, completions = batch(10, bad={0, 5})
    lenient = matrix_of(FaultyScorer(on_bad("nan")), policy="nan").score(prompts, completions)
    assert lenient.failures == {"judge": 0}  # NaN = "does not apply" (docs/design.md section 4)
    assert torch.isnan(lenient.column("judge")).sum() == 2
    strict = matrix_of(FaultyScorer(on_bad("nan")), policy="nan", nan_is_failure=True)
    with pytest.warns(RuntimeWarning, match="failed on 2/10"):
        out = strict.score(prompts, completions)
    assert out.failures == {"judge": 0 + 2}
    assert "nan_is_failure" in out.findings["judge"][0][0]
    # failed and not-applicable are both NaN in the scores and told apart by the mask
    assert torch.equal(torch.isnan(out.column("judge")), out.failed[:, 0])


def test_inf_is_always_a_failure():
    prompts, completions = batch(8, bad={2})
    with pytest.warns(RuntimeWarning, match="returned inf"):
        out = matrix_of(FaultyScorer(on_bad("inf")), policy="nan").score(prompts, completions)
    assert out.failures == {"judge": 1} and math.isnan(out.column("judge")[2])


class BatchShapeBug:
    """Drops the last score of any batch larger than one (a classic off-by-one)."""

    def score(self, prompts, completions):
        n = len(completions)
        return ScoreResult.from_lists([0.5] * (n - 1 if n > 1 else 1), [[] for _ in range(n)])


class AlwaysWrongShape:
    def score(self, prompts, completions):
        return ScoreResult.from_lists([0.5, 0.5, 0.5], [[], [], []])


def test_wrong_shape_is_isolated_per_sample_and_a_dimension_failing_on_most_samples_stops():
    prompts, completions = batch(6)
    out = matrix_of(BatchShapeBug(), policy="nan").score(prompts, completions)
    assert out.failures == {"judge": 0} and (out.column("judge") == 0.5).all()
    with pytest.raises(ScorerFailureError) as err:
        matrix_of(AlwaysWrongShape(), policy="nan").score(prompts, completions)
    message = str(err.value)
    assert "matrix dimension 'judge'" in message and "6/6 samples" in message
    assert "returned scores of shape (3,), expected (1,)" in message  # the last error
    assert "Fix:" in message and "matrix.dimensions.judge.on_failure.max_failure_rate" in message
    assert isinstance(err.value, QuarkError)


def test_a_scorer_sleeping_past_its_timeout_fails_only_its_sample():
    scorer = FaultyScorer(on_bad("hang"))
    matrix = matrix_of(scorer, policy="retry", retries=1, timeout_s=0.2)
    prompts, completions = batch(8, bad={5})
    try:
        with pytest.warns(RuntimeWarning, match=r"timed out after 0.2 s"):
            out = matrix.score(prompts, completions)
        # the batch, sample 5 alone and its retry each hung; scoring returned while they still hang
        still_hanging = scorer.waiting
    finally:
        scorer.release.set()  # let the abandoned threads return
    assert still_hanging == 3
    assert out.failures == {"judge": 1} and out.failed[5, 0]
    assert (out.column("judge")[~out.failed[:, 0]] == 1.0).all()
    assert "timed out after 0.2 s" in out.findings["judge"][5][0]


def test_a_scorer_that_hangs_on_everything_is_given_up_after_max_hung_calls():
    scorer = FaultyScorer(lambda text: "hang")
    matrix = matrix_of(scorer, policy="nan", timeout_s=0.1, max_hung_calls=3, max_failure_rate=1.0)
    prompts, completions = batch(10)
    try:
        with pytest.warns(RuntimeWarning):
            out = matrix.score(prompts, completions)
        still_hanging = scorer.waiting  # returned without waiting for any of them
    finally:
        scorer.release.set()
    assert out.failures == {"judge": 10}
    assert len(scorer.calls) == 3  # the batch and two samples; the rest fail at once
    assert still_hanging == 3
    assert "still running past on_failure.timeout_s" in out.findings["judge"][9][0]


def test_retry_succeeds_on_the_second_try():
    seen: dict[str, int] = {}

    def first_try_inf(text):
        seen[text] = seen.get(text, 0) + 1
        return "inf" if text.startswith("BAD") and seen[text] == 1 else None

    prompts, completions = batch(6, bad={1, 4})
    retrying = matrix_of(FaultyScorer(first_try_inf), policy="retry", retries=2)
    out = retrying.score(prompts, completions)
    assert out.failures == {"judge": 0} and (out.column("judge") == 1.0).all()
    seen.clear()
    with pytest.warns(RuntimeWarning):
        assert matrix_of(FaultyScorer(first_try_inf), policy="nan").score(prompts, completions).failures == {
            "judge": 2
        }


def test_retries_are_bounded():
    scorer = FaultyScorer(on_bad("raise"))
    prompts, completions = batch(4, bad={0})
    with pytest.warns(RuntimeWarning):
        out = matrix_of(scorer, policy="retry", retries=2).score(prompts, completions)
    assert out.failures == {"judge": 1}
    assert scorer.calls == [4, 1, 1, 1, 1, 1, 1]  # batch + 4 isolating calls, then 2 retries of sample 0


def test_stop_policy_ends_the_run_at_the_first_failure():
    prompts, completions = batch(10, bad={7})
    scorer = FaultyScorer(on_bad("raise"))
    with pytest.raises(ScorerFailureError) as err:
        matrix_of(scorer, policy="stop").score(prompts, completions)
    message = str(err.value)
    assert "matrix dimension 'judge'" in message and "failed on 1/10 samples" in message
    assert "sample 7 (prompt 'p7'): raised ValueError" in message
    assert "policy is 'stop'" in message and "Fix:" in message
    assert scorer.calls == [10] + [1] * 10  # isolated to name the sample, never retried


def test_failure_rate_above_the_limit_stops_naming_the_dimension():
    prompts, completions = batch(10, bad={0, 1, 2, 3, 4, 5})
    with pytest.raises(
        ScorerFailureError, match=r"'judge'.*6/10 samples \(60% > on_failure.max_failure_rate 0.5\)"
    ):
        matrix_of(FaultyScorer(on_bad("raise")), policy="nan").score(prompts, completions)
    with pytest.warns(RuntimeWarning):  # 1.0 = never stop
        out = matrix_of(FaultyScorer(on_bad("raise")), policy="nan", max_failure_rate=1.0).score(
            prompts, completions
        )
    assert out.failures == {"judge": 6}


def test_grad_mode_is_carried_into_the_scorer_thread():
    class GradProbe:
        def score(self, prompts, completions):
            return ScoreResult.from_lists(
                [float(torch.is_grad_enabled())] * len(completions), [[]] * len(completions)
            )

    prompts, completions = batch(2)
    matrix = matrix_of(GradProbe(), timeout_s=5.0)
    with torch.no_grad():
        assert (matrix.score(prompts, completions).column("judge") == 0.0).all()
    assert (matrix.score(prompts, completions).column("judge") == 1.0).all()


# ------------------------------------------------------------------ gates
def gated(on_failure: str) -> list:
    return [(0, Gate(below=1.0, mode="cap", value=-1.0, on_failure=on_failure))]


def test_a_failed_gate_sample_is_vetoed_never_passed():
    # column 0 = safety (gate), column 1 = another dimension; sample 1's safety scorer failed
    scores = torch.tensor([[1.0, 2.0], [NAN, 2.0], [NAN, 2.0], [0.0, 2.0]])
    failed = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    weights, ctx = torch.tensor([1.0, 1.0]), AggregationContext(group_size=4)
    agg, adv, _ = aggregate_and_advantages("sum", scores, weights, ctx, gates=gated("veto"), failed=failed)
    # sample 2: safety does not apply (NaN, not failed) -> passes; sample 1: failed -> capped like sample 3
    assert agg.reward.tolist() == [3.0, -1.0, 2.0, -1.0]
    assert adv[1] < 0 and adv[1] == adv[3]
    agg, _, _ = aggregate_and_advantages("sum", scores, weights, ctx, gates=gated("veto"))
    assert agg.reward[1] == 2.0  # without the failure mask it would have passed as if safe


def test_a_failed_gate_sample_with_nothing_else_applicable_gets_the_gate_value():
    scores = torch.tensor([[NAN, NAN], [1.0, 1.0]])
    failed = torch.tensor([[True, False], [False, False]])
    agg, _, _ = aggregate_and_advantages(
        "sum", scores, torch.ones(2), AggregationContext(2), gates=gated("veto"), failed=failed
    )
    assert agg.reward.tolist() == [-1.0, 2.0]


@pytest.mark.parametrize("aggregator", ["sum", "gdpo"])
def test_exclude_takes_a_failed_gate_sample_out_of_learning(aggregator):
    scores = torch.tensor([[1.0, 2.0], [NAN, 5.0], [1.0, 0.0], [0.0, 1.0]])
    failed = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    agg, adv, _ = aggregate_and_advantages(
        aggregator, scores, torch.ones(2), AggregationContext(4), gates=gated("exclude"), failed=failed
    )
    assert math.isnan(agg.reward[1]) and adv[1] == 0.0  # neither rewarded nor punished
    assert adv[3] == adv.min()  # a real veto still applies


def test_matrix_failures_reach_the_gate_through_the_matrix():
    scorer = FaultyScorer(on_bad("raise"))
    matrix = AlignmentMatrix(
        [
            Dimension("safety", "fundamental", scorer, gate={"below": 1.0, "value": -1.0, "mode": "cap"}),
            Dimension("other", "format", FaultyScorer()),
        ]
    )
    prompts, completions = batch(4, bad={2})
    with pytest.warns(RuntimeWarning):
        out = matrix.score(prompts, completions)
    agg, _, _ = aggregate_and_advantages(
        "sum", out.scores, matrix.weights(), AggregationContext(4), gates=matrix.gates(), failed=out.failed
    )
    assert agg.reward.tolist() == [2.0, 2.0, -1.0, 2.0]


# ------------------------------------------------------------------ configuration
def test_on_failure_config_merges_matrix_defaults_and_dimension_overrides():
    cfg = OmegaConf.create(
        {
            "on_failure": {"policy": "retry", "retries": 3, "timeout_s": 10},
            "dimensions": {
                "format_rules": {
                    "category": "format",
                    "on_failure": {"policy": "nan", "nan_is_failure": True},
                    "scorer": {"_target_": "quark_lightning.scorers.format.FormatScorer"},
                },
                "safety": {
                    "category": "fundamental",
                    "gate": {"below": 1.0, "value": -1.0, "on_failure": "exclude"},
                    "scorer": {"_target_": "quark_lightning.scorers.safety.DangerousAdviceScorer"},
                },
            },
        }
    )
    matrix = build_matrix(cfg)
    fmt, safety = matrix.dimensions
    assert fmt.on_failure == FailurePolicy(policy="nan", retries=3, timeout_s=10, nan_is_failure=True)
    assert safety.on_failure == FailurePolicy(policy="retry", retries=3, timeout_s=10)
    assert safety.gate.on_failure == "exclude"


@pytest.mark.parametrize(
    "block,fragment",
    [
        ({"policy": "ignore"}, "matrix.dimensions.judge.on_failure.policy: got 'ignore', expected one of"),
        ({"retries": -1}, "on_failure.retries: got -1, expected an integer >= 0"),
        ({"timeout_s": 0}, "on_failure.timeout_s: got 0, expected null or a number of seconds > 0"),
        ({"max_failure_rate": 2}, "on_failure.max_failure_rate: got 2"),
        ({"retry": 2}, "matrix.dimensions.judge.on_failure.retry: unknown key"),
    ],
)
def test_bad_on_failure_values_name_key_expectation_and_fix(block, fragment):
    with pytest.raises(ConfigError) as err:
        matrix_of(FaultyScorer(), **block)
    assert fragment in str(err.value) and "Fix:" in str(err.value)


def test_shipped_matrices_declare_failure_policies():
    conf = Path(__file__).resolve().parents[2] / "conf" / "matrix"
    for name in ("demo", "rules_only"):
        cfg = OmegaConf.load(conf / f"{name}.yaml")
        matrix = build_matrix(cfg)
        policies = {d.name: d.on_failure for d in matrix.dimensions}
        assert policies["safety"].nan_is_failure and policies["format_rules"].nan_is_failure
        assert policies["safety"].policy == "retry" and policies["safety"].timeout_s == 300
        # triage applies to red-flag prompts only, over_triage to the others: their NaN is not a fault
        assert not policies["triage"].nan_is_failure and not policies["over_triage"].nan_is_failure
    medical = OmegaConf.load(conf / "medical.yaml")
    assert medical.dimensions.safety.gate.on_failure == "veto"
    assert medical.dimensions.triage.gate.on_failure == "veto"


# ------------------------------------------------------------------ a real training run
class FirstSeen:
    """Fault by the order in which distinct completions are first seen: deterministic across retries and
    the per-sample isolation calls (which see the same texts again)."""

    def __init__(self, kind: str, every: int, offset: int = 0):
        self.kind, self.every, self.offset = kind, every, offset
        self.order: dict[str, int] = {}

    def __call__(self, text: str) -> str | None:
        ordinal = self.order.setdefault(text, len(self.order))
        return self.kind if ordinal % self.every == self.offset else None


def read_metrics(log_dir: str) -> list[dict[str, str]]:
    (path,) = Path(log_dir).rglob("metrics.csv")
    with open(path) as fh:
        return [row for row in csv.DictReader(fh) if row.get("failures/raises")]


def test_grpo_run_with_faulty_scorers_completes_and_logs_failure_counts(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    loaded = load_causal_lm(tiny_model_dir)
    raises = FaultyScorer(FirstSeen("raise", every=10))  # ~10% of samples
    nans = FaultyScorer(FirstSeen("nan", every=8, offset=3))
    hangs = FaultyScorer(FirstSeen("hang", every=16, offset=1))
    gate_fails = FaultyScorer(FirstSeen("raise", every=8, offset=2))
    matrix = AlignmentMatrix(
        [
            Dimension("format_rules", "format", FormatScorer(min_words=3, max_words=40)),
            Dimension("raises", "fundamental", raises, on_failure={"policy": "retry", "retries": 1}),
            Dimension("nans", "expert", nans, on_failure={"policy": "nan", "nan_is_failure": True}),
            Dimension("hangs", "online", hangs, on_failure={"policy": "nan", "timeout_s": 0.2}),
            Dimension(
                "safety",
                "fundamental",
                gate_fails,
                gate={"below": 1.0, "mode": "cap", "value": -1.0},
                on_failure={"policy": "nan"},
            ),
        ]
    )
    module = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        matrix,
        GRPOConfig(num_generations=4, lr=1e-3),
        HFGenerateEngine(max_new_tokens=8),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=CSVLogger(str(tmp_path), name="faults"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        with pytest.warns(RuntimeWarning, match="matrix dimension 'raises'"):
            trainer.fit(
                module, datamodule=PromptDataModule(path="bundled", prompts_per_step=2, val_fraction=0.0)
            )
    finally:
        hangs.release.set()
    assert trainer.global_step == 2  # the run completed

    rows = read_metrics(str(tmp_path))
    assert len(rows) == 2
    counts = {name: [float(r[f"failures/{name}"]) for r in rows] for name in matrix.names}
    totals = {name: [float(r[f"failures_total/{name}"]) for r in rows] for name in matrix.names}
    assert counts["format_rules"] == [0.0, 0.0]
    for name in ("raises", "nans", "hangs", "safety"):
        assert counts[name][0] >= 1, (name, counts)  # the first distinct completion of step 1 is faulty
        assert totals[name][-1] == sum(counts[name])
        assert all(c <= 4 for c in counts[name])  # ~10% of 8 samples a step, never the whole batch
    assert {name: t[-1] for name, t in totals.items()} == module.scorer_failures.total

    # the last step's gated samples whose safety scorer failed were capped at the gate value
    record = module.last_step
    for i, found in enumerate(record.findings["safety"]):
        if found and found[0].startswith("scorer failed"):
            assert record.reward[i] <= -1.0

    # the cumulative counts travel in the checkpoint, so a resumed run keeps counting from them
    saved: dict = {}
    module.on_save_checkpoint(saved)
    fresh = GRPOModule(
        loaded.model,
        loaded.tokenizer,
        matrix,
        GRPOConfig(num_generations=4),
        HFGenerateEngine(max_new_tokens=8),
    )
    fresh.on_load_checkpoint(saved)
    assert fresh.scorer_failures.total == module.scorer_failures.total
