"""Guarded scorer calls: a scorer that raises, returns inf or the wrong shape, or hangs does not end the run.

Each matrix dimension has an `on_failure` policy (`matrix.on_failure` in `conf/matrix/*.yaml` is the
default of every dimension; `matrix.dimensions.NAME.on_failure` overrides single keys):

    policy            nan    a failed sample's score is NaN (the aggregators treat it as not applicable)
                      retry  call the scorer again on the failed samples, up to `retries` more times;
                             what still fails becomes NaN as with `nan`
                      stop   the first failure stops the run with a QuarkError
    retries           extra attempts with `retry` (ignored by the other policies)
    timeout_s         longest one scorer call (a batch, or one sample) may take; null = no limit
    max_failure_rate  a dimension failing on more than this fraction of one call's samples (after
                      retries) stops the run, naming the dimension; 1.0 or null = never
    nan_is_failure    true for a dimension that applies to every sample: a NaN it returns is a fault,
                      not "does not apply"
    max_hung_calls    how many timed-out calls of one scorer may still be running before further calls
                      fail at once instead of starting another thread

What is a failure (per sample): the call raised, timed out, returned something that is not a
ScoreResult of the right shape (N scores, N findings lists), the scorer reported the sample in
`ScoreResult.failures` (an LLM judge that timed out, answered 5xx or gave a reply that does not parse,
after the judge client's own retries), or the sample's score is +-inf (or NaN with `nan_is_failure`). A NaN returned by the scorer is otherwise its declaration "does not apply"
(docs/design.md section 4) and is not counted. Failed samples are NaN in `MatrixScores.scores`, True in
`MatrixScores.failed` (so they stay distinguishable from not-applicable ones), and their findings read
"scorer failed: <reason>". Gates look at `failed` (see `Gate.on_failure`): a failed sample is never
passed through a gate as if it were safe.

Isolation: when a whole call fails (raise, timeout, wrong shape), each sample is scored alone, so a
scorer that raises on 10% of the samples fails ~10% of them, not the batch.

Timeouts use a worker thread: the call runs in a daemon thread and the caller waits `timeout_s`.
Python cannot kill a thread, so a timed-out call is abandoned and may keep running (and using CPU or a
connection) until it returns; at most `max_hung_calls` such calls per dimension are tolerated, after
which the dimension's calls fail at once until one of them finishes. Consequences: a scorer with a
timeout must tolerate a new call starting while an abandoned one is still running (rule scorers and
HTTP judges do; a shared HF fast tokenizer may raise "Already borrowed", which is then counted as a
failure), and a scorer stuck in C code that holds the GIL cannot be timed out by a thread (the
patterns from data files run under the `regex` module's own per-match timeout, infra/text.py, so a
catastrophic pattern fails its sample instead). Grad mode, inference mode and the current CUDA device are carried into the thread.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from quark_lightning.infra.errors import ConfigError, QuarkError

POLICIES = ("nan", "retry", "stop")
ON_FAILURE_KEYS = ("policy", "retries", "timeout_s", "max_failure_rate", "nan_is_failure", "max_hung_calls")


class ScorerFailureError(QuarkError, RuntimeError):
    """A dimension's scorer failed under policy `stop`, or on more samples than its policy tolerates."""


@dataclass(frozen=True)
class FailurePolicy:
    """How one dimension handles a failing scorer (see the module docstring)."""

    policy: str = "retry"
    retries: int = 1
    timeout_s: float | None = 300.0
    max_failure_rate: float | None = 0.5
    nan_is_failure: bool = False
    max_hung_calls: int = 4

    @classmethod
    def from_config(cls, cfg: Any, where: str) -> FailurePolicy:
        """Validate an `on_failure` mapping; errors name the key, the expectation and the fix."""
        return merged_policy(None, cfg, where)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "policy": (lambda v: v in POLICIES, f"one of {list(POLICIES)}"),
    "retries": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "timeout_s": (lambda v: v is None or (_is_num(v) and v > 0), "null or a number of seconds > 0"),
    "max_failure_rate": (lambda v: v is None or (_is_num(v) and 0 <= v <= 1), "null or a number in [0, 1]"),
    "nan_is_failure": (lambda v: isinstance(v, bool), "true or false"),
    "max_hung_calls": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "an integer >= 1",
    ),
}


def validate_on_failure(cfg: Any, where: str) -> list[str]:
    """Problems with one `on_failure` block, each as 'WHERE.on_failure.KEY: got X, expected Y. Fix: ...'."""
    if cfg is None:
        return []
    if not isinstance(cfg, Mapping):
        return [
            f"{where}.on_failure: got {cfg!r}, expected a mapping with keys {', '.join(ON_FAILURE_KEYS)}. "
            f"Fix: write it as {where}.on_failure: {{policy: retry, retries: 1, ...}}."
        ]
    problems = []
    for key in sorted(set(cfg) - set(ON_FAILURE_KEYS)):
        problems.append(f"{where}.on_failure.{key}: unknown key. Fix: use only {', '.join(ON_FAILURE_KEYS)}.")
    for key, (ok, expected) in _CHECKS.items():
        if key in cfg and not ok(cfg[key]):
            problems.append(
                f"{where}.on_failure.{key}: got {cfg[key]!r}, expected {expected}. "
                f"Fix: set {where}.on_failure.{key} to {expected}."
            )
    return problems


def merged_policy(matrix_level: Any, dimension_level: Any, where: str) -> FailurePolicy:
    """The dimension's policy: matrix-level defaults (`matrix.on_failure`), overridden key by key by the
    dimension's own block (`WHERE.on_failure`, WHERE = matrix.dimensions.NAME). Raises ConfigError."""
    problems = validate_on_failure(matrix_level, "matrix") + validate_on_failure(dimension_level, where)
    if problems:
        raise ConfigError("invalid on_failure policy:\n  - " + "\n  - ".join(problems))
    return FailurePolicy(**{**dict(matrix_level or {}), **dict(dimension_level or {})})


# ---------------------------------------------------------------------------------------- one call
class _CallFailed(Exception):
    """A whole scorer call failed; `reason` says how."""

    def __init__(self, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.reason, self.timed_out = reason, timed_out


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"raised {type(err).__name__}: {text}" if text else f"raised {type(err).__name__}"


def run_in_thread(fn: Callable[[], Any], timeout_s: float, name: str) -> Any:
    """fn() in a daemon thread, waited on for `timeout_s`; re-raises what fn raised. On a timeout raises
    _CallFailed whose `thread` attribute is the abandoned, still running thread."""
    box: dict[str, Any] = {}
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

    def target() -> None:
        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name=f"quark-scorer-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        failure = _CallFailed(f"timed out after {timeout_s:g} s (on_failure.timeout_s)", timed_out=True)
        failure.thread = thread  # type: ignore[attr-defined]
        raise failure
    if "error" in box:
        raise box["error"]
    return box["value"]


def checked_result(result: Any, n: int) -> tuple[torch.Tensor, list[list[str]], dict[int, str]]:
    """A scorer's return value as ((n,) scores in the run's float dtype, n findings lists, {sample: why it failed});
    raises _CallFailed if malformed. The failures are those the scorer reports itself (ScoreResult.failures,
    e.g. a judge request that timed out)."""
    if not hasattr(result, "scores") or not hasattr(result, "findings"):
        raise _CallFailed(f"returned {type(result).__name__}, expected a ScoreResult(scores, findings)")
    try:
        scores = torch.as_tensor(result.scores).detach().cpu().to(torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError) as err:
        raise _CallFailed(f"returned scores that are not numbers ({_describe(err)})") from err
    if tuple(scores.shape) != (n,):
        raise _CallFailed(f"returned scores of shape {tuple(scores.shape)}, expected ({n},)")
    findings = result.findings
    if not isinstance(findings, Sequence) or len(findings) != n:
        size = len(findings) if isinstance(findings, Sequence) else type(findings).__name__
        raise _CallFailed(f"returned {size} findings lists for {n} samples")
    failures = getattr(result, "failures", None) or {}
    if not isinstance(failures, Mapping) or not all(isinstance(i, int) and 0 <= i < n for i in failures):
        raise _CallFailed(f"returned failures {failures!r}, expected a mapping sample index -> reason")
    return scores, [list(f) for f in findings], {int(i): str(r) for i, r in failures.items()}


def sample_fault(value: float, nan_is_failure: bool) -> str | None:
    """Why one returned score is a failure, or None when it is a valid score (or a legitimate NaN)."""
    if math.isinf(value):
        return f"returned {value}"
    if math.isnan(value) and nan_is_failure:
        return "returned NaN, but on_failure.nan_is_failure says this dimension applies to every sample"
    return None


# ---------------------------------------------------------------------------------------- the guard
@dataclass
class GuardedResult:
    scores: torch.Tensor  # (N,) float32 (float64 in a 64-true run); NaN = not applicable or failed
    findings: list[list[str]]  # (N,) a failed sample's findings: ["scorer failed: <reason>"]
    failed: torch.Tensor  # (N,) bool
    reasons: dict[int, str] = field(default_factory=dict)  # sample index -> why it failed

    @property
    def last_error(self) -> str | None:
        return self.reasons[max(self.reasons)] if self.reasons else None


class ScorerGuard:
    """Runs one dimension's scorer under its FailurePolicy; counts failures across calls."""

    def __init__(self, name: str, scorer: Any, policy: FailurePolicy, gate_on_failure: str | None = None):
        self.name, self.scorer, self.policy = name, scorer, policy
        self.gate_on_failure = gate_on_failure  # the dimension's gate.on_failure, None without a gate
        self.total_failures = 0
        self.total_samples = 0
        self._hung: list[threading.Thread] = []
        self._warned = False

    # one call of the scorer on a subset; -> ((n,) scores, findings) or raises _CallFailed
    def _call(self, prompts: Sequence[dict], completions: Sequence[str]) -> tuple[torch.Tensor, list, dict]:
        self._hung = [t for t in self._hung if t.is_alive()]
        if len(self._hung) >= self.policy.max_hung_calls:
            raise _CallFailed(
                f"not called: {len(self._hung)} earlier calls are still running past on_failure.timeout_s "
                f"(on_failure.max_hung_calls={self.policy.max_hung_calls})"
            )

        def call() -> Any:
            return self.scorer.score(list(prompts), list(completions))

        try:
            if self.policy.timeout_s is None:
                result = call()
            else:
                result = run_in_thread(call, self.policy.timeout_s, self.name)
        except _CallFailed as failure:
            if failure.timed_out:
                self._hung.append(failure.thread)  # type: ignore[attr-defined]
            raise
        except Exception as err:  # noqa: BLE001 - any scorer exception is a failure under the policy
            raise _CallFailed(_describe(err)) from err
        return checked_result(result, len(completions))

    def _score_subset(self, idx: list[int], prompts, completions, out: GuardedResult) -> None:
        """Score samples `idx` in one call; when the whole call fails, score each sample alone."""
        try:
            scores, findings, failures = self._call([prompts[i] for i in idx], [completions[i] for i in idx])
        except _CallFailed as failure:
            if len(idx) > 1:
                for i in idx:
                    self._score_subset([i], prompts, completions, out)
            else:
                out.reasons.update(dict.fromkeys(idx, failure.reason))
            return
        for j, i in enumerate(idx):
            fault = failures.get(j) or sample_fault(float(scores[j]), self.policy.nan_is_failure)
            if fault is not None:
                out.reasons[i] = fault
            else:
                out.reasons.pop(i, None)
                out.scores[i], out.findings[i] = scores[j], findings[j]

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> GuardedResult:
        n = len(completions)
        out = GuardedResult(
            scores=torch.full((n,), math.nan),
            findings=[[] for _ in range(n)],
            failed=torch.zeros(n, dtype=torch.bool),
        )
        if n == 0:
            return out
        attempts = 1 + (self.policy.retries if self.policy.policy == "retry" else 0)
        pending = list(range(n))
        for _ in range(attempts):
            self._score_subset(pending, prompts, completions, out)
            pending = sorted(out.reasons)
            if not pending:
                break
        for i, reason in out.reasons.items():
            out.failed[i] = True
            out.scores[i] = math.nan
            out.findings[i] = [f"scorer failed: {reason}"]
        self._account(out, prompts, n)
        return out

    # ------------------------------------------------------------------ counting, warning, stopping
    def _sample_name(self, prompts: Sequence[dict], i: int) -> str:
        pid = prompts[i].get("id") if isinstance(prompts[i], Mapping) else None
        return f"sample {i} (prompt '{pid}')" if pid is not None else f"sample {i}"

    def _account(self, out: GuardedResult, prompts: Sequence[dict], n: int) -> None:
        failed = len(out.reasons)
        self.total_samples += n
        self.total_failures += failed
        if not failed:
            return
        first = min(out.reasons)
        where = f"matrix dimension '{self.name}'"
        what = f"{where}: scorer {type(self.scorer).__name__} failed on {failed}/{n} samples"
        detail = f"{self._sample_name(prompts, first)}: {out.reasons[first]}"
        if self.policy.policy == "stop":
            raise ScorerFailureError(
                f"{what} ({detail}) and matrix.dimensions.{self.name}.on_failure.policy is 'stop'. "
                f"Fix: repair the scorer, or set on_failure.policy to 'retry' or 'nan' to keep going."
            )
        rate = failed / n
        if self.policy.max_failure_rate is not None and rate > self.policy.max_failure_rate:
            raise ScorerFailureError(
                f"{what} ({rate:.0%} > on_failure.max_failure_rate {self.policy.max_failure_rate:g}); "
                f"last error: {self._sample_name(prompts, max(out.reasons))}: {out.last_error}. "
                f"{self.total_failures} failures of this dimension so far. Fix: repair the scorer, drop the "
                f"dimension with matrix.dimensions.{self.name}=null, or raise "
                f"matrix.dimensions.{self.name}.on_failure.max_failure_rate."
            )
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{what} ({detail}). {self._consequence()} Counted in the metric failures/{self.name}; "
                f"further failures of this dimension are only counted.",
                RuntimeWarning,
                stacklevel=4,  # the caller of AlignmentMatrix.score
            )

    def _consequence(self) -> str:
        tried = f" after {self.policy.retries} retries" if self.policy.policy == "retry" else ""
        gate = {
            "veto": " and its gate vetoes them as if they had scored below the threshold",
            "exclude": " and its gate excludes them from learning (reward NaN, advantage 0)",
        }.get(self.gate_on_failure or "", "")
        return f"Failed samples{tried} score NaN on this dimension (it adds nothing to their reward){gate}."


class FailureCounter:
    """Per-step and cumulative failure counts of a training run (summed over ranks by GRPOModule), as
    metrics `failures/<dim>` (this step) and `failures_total/<dim>` (since the start of the run; the
    total is in the checkpoint, so it continues after a resume)."""

    def __init__(self, names: Sequence[str]):
        self.step = dict.fromkeys(names, 0)
        self.total = dict.fromkeys(names, 0)

    def record(self, failures: Mapping[str, int]) -> None:
        for name in self.step:
            self.step[name] = int(failures.get(name, 0))
            self.total[name] += self.step[name]

    def metrics(self) -> dict[str, float]:
        out = {f"failures/{name}": float(count) for name, count in self.step.items()}
        out.update({f"failures_total/{name}": float(count) for name, count in self.total.items()})
        return out
