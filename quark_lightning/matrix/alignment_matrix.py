"""The alignment matrix: named dimensions (matrix/dimension.py), each in one of the paper's four categories.

Every dimension closes the paper's loop *observable metric -> attributable diagnosis -> optimizable
reward*: its scorer returns a per-sample score (the reward, NaN = not applicable) **and** findings
(the diagnosis: which rubric item was missed, which format rule was broken, which red flag ignored).
`AlignmentMatrix.score` runs every dimension over a batch and returns the (N, K) score matrix that the
aggregation turns into one scalar reward. Each scorer runs under a `ScorerGuard` applying its dimension's
`on_failure` policy (matrix/dimension.py): a scorer that raises, returns inf or the wrong shape, or hangs
does not end the run, and a failed sample is NaN in `scores` and True in `failed`, so it is told apart
from a sample the dimension does not apply to.

What is a failure (per sample): the call raised, timed out, returned something that is not a
ScoreResult of the right shape (N scores, N findings lists), the scorer reported the sample in
`ScoreResult.failures` (an LLM judge that timed out, answered 5xx or gave a reply that does not parse,
after the judge client's own retries), or the sample's score is +-inf (or NaN with `nan_is_failure`).
A NaN returned by the scorer is otherwise its declaration "does not apply" (docs/design.md section 4)
and is not counted. Failed samples are NaN in `MatrixScores.scores`, True in
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
catastrophic pattern fails its sample instead). Grad mode, inference mode and the current CUDA device
are carried into the thread.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from quark_lightning.infra.errors import QuarkError
from quark_lightning.matrix.dimension import Dimension, FailurePolicy, Gate, MatrixConfigError


class ScorerFailureError(QuarkError, RuntimeError):
    """A dimension's scorer failed under policy `stop`, or on more samples than its policy tolerates."""


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


# ---------------------------------------------------------------------------------------- the matrix
@dataclass
class MatrixScores:
    names: list[str]
    scores: torch.Tensor  # (N, K) raw scores, NaN = not applicable
    findings: dict[str, list[list[str]]] = field(default_factory=dict)  # name -> per-sample findings
    failed: torch.Tensor | None = None  # (N, K) bool: the scorer failed on the sample (its score is NaN)
    errors: dict[str, str] = field(default_factory=dict)  # name -> last failure reason in this call

    def __post_init__(self) -> None:
        if self.failed is None:
            self.failed = torch.zeros(self.scores.shape, dtype=torch.bool)

    def column(self, name: str) -> torch.Tensor:
        return self.scores[:, self.names.index(name)]

    @property
    def failures(self) -> dict[str, int]:
        """Failed samples per dimension in this call (NaN scores that are failures, not "does not apply")."""
        return {name: int(self.failed[:, k].sum()) for k, name in enumerate(self.names)}


class AlignmentMatrix:
    """An ordered set of dimensions; scores a batch of (prompt, completion) pairs."""

    def __init__(self, dimensions: Sequence[Dimension]):
        if not dimensions:
            raise MatrixConfigError(
                "the matrix has no dimensions; declare at least one under `matrix.dimensions`"
            )
        seen: set[str] = set()
        for dim in dimensions:
            if dim.name in seen:
                raise MatrixConfigError(
                    f"matrix dimension '{dim.name}' is declared twice; names must be unique"
                )
            seen.add(dim.name)
        self.dimensions = list(dimensions)
        self.guards = {
            d.name: ScorerGuard(d.name, d.scorer, d.on_failure, d.gate.on_failure if d.gate else None)
            for d in self.dimensions
        }

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def categories(self) -> dict[str, str]:
        return {d.name: d.category for d in self.dimensions}

    def weights(self) -> torch.Tensor:
        return torch.tensor([float(d.weight) for d in self.dimensions])  # (K,) the run's float dtype

    def gates(self) -> list[tuple[int, Gate]]:
        return [(k, d.gate) for k, d in enumerate(self.dimensions) if d.gate is not None]

    def torch_modules(self) -> dict[str, torch.nn.Module]:
        """Learned reward models and in-process judge models held by scorers (frozen; registered beside
        the policy so Lightning puts them on each rank's device). A judge shared by several dimensions
        is registered once, as `judge_<first dimension using it>`."""
        out: dict[str, torch.nn.Module] = {}
        for dim in self.dimensions:
            module = getattr(dim.scorer, "model", None)
            if isinstance(module, torch.nn.Module):
                out[dim.name] = module
        for name, judge in self.judges().items():
            module = getattr(judge, "model", None)
            if isinstance(module, torch.nn.Module) and all(m is not module for m in out.values()):
                out[f"judge_{name}"] = module
        return out

    def judges(self) -> dict[str, Any]:
        """The LLM judges the scorers ask, by the first dimension using each (shared judges once)."""
        out: dict[str, Any] = {}
        for dim in self.dimensions:
            judge = getattr(dim.scorer, "llm_judge", None)
            if judge is not None and all(j is not judge for j in out.values()):
                out[dim.name] = judge
        return out

    def judge_stats(self) -> dict[str, int]:
        """Summed counters of every judge: requests sent, cache hits and misses, failed replies."""
        total = {"requests": 0, "cache_hits": 0, "cache_misses": 0, "failures": 0}
        for judge in self.judges().values():
            for key, value in judge.stats().items():
                total[key] = total.get(key, 0) + value
        return total

    def score(self, prompts: Sequence[dict[str, Any]], completions: Sequence[str]) -> MatrixScores:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        columns, failed, findings, errors = [], [], {}, {}
        for dim in self.dimensions:
            result = self.guards[dim.name].score(prompts, completions)  # raises ScorerFailureError
            columns.append(result.scores)
            failed.append(result.failed)
            findings[dim.name] = result.findings
            if result.last_error is not None:
                errors[dim.name] = result.last_error
        return MatrixScores(
            names=self.names,
            scores=torch.stack(columns, dim=1),
            findings=findings,
            failed=torch.stack(failed, dim=1),
            errors=errors,
        )
