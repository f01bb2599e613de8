"""Reference-Frozen Normalization (RFN): reward scales fixed once against the frozen reference policy.

Interpretation (the paper names RFN but publishes no formula; see docs/paper-interpretation.md#rfn):

Before RL, the frozen reference policy pi_ref answers each calibration prompt G times; every matrix
dimension scores those answers, giving raw scores R_ref of shape (M, K). Per dimension k we freeze

    mu_k    = nanmean(R_ref[:, k])
    sigma_k = unbiased nanstd(R_ref[:, k])

and from then on feed the aggregation

    z_k = clip((r_k - mu_k) / (sigma_k + eps), -c, c)           (default eps 1e-6, c 5)

so that, under pi_ref, every dimension has mean 0 and std 1 whatever its raw scale: a Bradley-Terry logit,
a [0, 1] rubric score and a {-1, 0} fact-check penalty all count the same, and z stays in "standard
deviations of the reference" for the whole stage (it never moves with the policy, unlike group or batch
statistics). The map is affine-equivariant: r -> a*r + b (a > 0) leaves z unchanged.

Options and edge cases:
- `mode="global"` (default) uses one mu_k per dimension; `mode="per_prompt"` anchors mu_k(x) on the
  reference's own answers to prompt x (QuarkMedBench-style per-prompt reference mean) with the global
  sigma_k, falling back to the global mu_k for prompts outside the calibration set.
- NaN (not applicable) stays NaN; it never becomes a number.
- A dimension the reference never triggers (count 0) is `never_applies`: mu 0, sigma 1 (z = clipped raw).
- A dimension with fewer than `min_count` scored samples is `sparse`: its mu is used, sigma falls back to 1
  when fewer than two samples exist.
- A constant dimension (sigma < `min_std`, e.g. a safety rule the reference always passes) is `constant`:
  mu is kept and sigma falls back to `fallback_std`, so a departure from the reference is bounded by the
  clip; no division by ~0. `fallback_std: bernoulli` (the default of `optimization=rfn*`) uses the
  standard deviation of a pass/fail score whose n calibration samples all agreed, with the pass rate
  estimated as p = (n + 1/2) / (n + 1) (a half-sample prior): sigma = sqrt(p (1 - p)), 0.087 for n = 64.
  A number (1.0 was the old default) is used as is, in raw units. Why: with sigma = 1 an atomic
  refutation (score -1 on a {-1, 0} dimension) cost 1 z, but 5 z had the reference slipped once in
  calibration (measured sigma 0.12): a 5x jump on one calibration event. The Bernoulli fallback is
  continuous with the measured case (one slip in 64: sigma 0.125; none: 0.087), and it assumes the
  dimension's scores span a unit range, as every bounded scorer here does ([0, 1] or [-1, 0]).
Each status is reported so users see which dimensions could not be calibrated properly.

Length-decoupled normalization (option `length_decoupled`: dimension names, or `all`): reward models
and several rules rise with answer length, so a policy can buy reward with words. For a decoupled
dimension, calibration also freezes the slope of its score on completion length (tokens) within prompt,
over the reference answers,

    beta_k = sum (r_k - rbar_k(x)) (l - lbar(x)) / sum (l - lbar(x))^2      (x: the prompt; OLS slope)

and the dimension is then normalized on its length residual r_k - beta_k (l - lbar), lbar the calibration
mean length: mu_k and sigma_k are computed on the residuals, so under the reference the residual has
mean 0 and std 1, and two answers differing only in length score (nearly) the same. A score without a
length (a target, an expert reference answer) is read at the mean length, i.e. not adjusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from quark_lightning.infra.errors import ConfigError
from quark_lightning.infra.precision import upcast
from quark_lightning.shaping.aggregation import nanstd
from quark_lightning.shaping.shaping_settings import FALLBACKS
from quark_lightning.shaping.shaping_settings import NORMALIZATION_MODES as MODES


@dataclass
class ReferenceStats:
    mean: torch.Tensor  # (K,)
    std: torch.Tensor  # (K,) the sigma used for normalization (after fallbacks)
    raw_std: torch.Tensor  # (K,) the measured sigma
    count: torch.Tensor  # (K,) scored (non-NaN) reference samples
    status: list[str]  # (K,) ok | constant | sparse | never_applies




def fallback_sigma(fallback_std: float | str, count: int) -> float:
    """The sigma of a dimension whose `count` calibration scores were all equal (see the module doc)."""
    if fallback_std == "bernoulli":
        p = (count + 0.5) / (count + 1.0)
        return math.sqrt(p * (1.0 - p))
    return float(fallback_std)


def check_fallback(fallback_std: float | str) -> None:
    if isinstance(fallback_std, str):
        if fallback_std not in FALLBACKS:
            raise ValueError(
                f"optimization.normalization.fallback_std: got {fallback_std!r}, expected a number > 0 or one of {FALLBACKS}"
            )
    elif not float(fallback_std) > 0:
        raise ValueError(
            f"optimization.normalization.fallback_std: got {fallback_std}, expected a number > 0"
        )


def reference_stats(
    scores: torch.Tensor,  # (M, K) raw scores of the reference's own answers
    min_count: int = 8,
    min_std: float = 1e-6,
    fallback_std: float | str = 1.0,
) -> ReferenceStats:
    scores = upcast(scores)
    count = (~torch.isnan(scores)).sum(0)  # (K,)
    mean = torch.nan_to_num(torch.nanmean(scores, 0), nan=0.0)  # (K,) 0 where the column is all NaN
    raw_std = nanstd(scores, dim=0)  # (K,) 0 where fewer than two values
    std = raw_std.clone()
    status = []
    for k in range(scores.size(1)):
        if count[k] == 0:
            status.append("never_applies")
            std[k] = 1.0
        elif raw_std[k] < min_std:
            status.append("constant" if count[k] >= min_count else "sparse")
            std[k] = fallback_sigma(fallback_std, int(count[k]))
        else:
            status.append("ok" if count[k] >= min_count else "sparse")
    return ReferenceStats(mean=mean, std=std, raw_std=raw_std, count=count, status=status)


def normalize(
    scores: torch.Tensor,  # (N, K)
    mean: torch.Tensor,  # (K,) or (N, K) per-sample anchors
    std: torch.Tensor,  # (K,)
    clip: float | None = 5.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    z = (scores - mean) / (std + eps)  # (N, K); NaN stays NaN
    return z.clamp(-clip, clip) if clip is not None else z


def within_prompt_slope(
    scores: torch.Tensor, lengths: torch.Tensor, prompt_ids: Sequence[str] | None
) -> torch.Tensor:
    """(M, K) scores, (M,) lengths -> (K,) OLS slope of each dimension on length, both centred on
    their prompt's mean (the whole batch is one prompt without ids); 0 where length does not vary."""
    x, ln = upcast(scores), upcast(lengths).to(upcast(scores).dtype)
    ids = list(prompt_ids) if prompt_ids is not None else ["-"] * x.size(0)
    num = torch.zeros(x.size(1), dtype=x.dtype)
    den = torch.zeros(x.size(1), dtype=x.dtype)
    for pid in dict.fromkeys(ids):
        rows = torch.tensor([i for i, p in enumerate(ids) if p == pid])
        r, length = x[rows], ln[rows].unsqueeze(1).expand(-1, x.size(1))  # (G, K)
        ok = ~torch.isnan(r)
        dl = torch.where(ok, length - _masked_mean(length, ok), torch.zeros_like(r))
        dr = torch.where(ok, r - _masked_mean(r, ok), torch.zeros_like(r))
        num, den = num + (dr * dl).sum(0), den + (dl * dl).sum(0)
    return torch.where(den > 1e-12, num / den.clamp(min=1e-12), torch.zeros_like(num))


def _masked_mean(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, x, torch.zeros_like(x)).sum(0) / ok.sum(0).clamp(min=1)


class ReferenceFrozenNormalizer(nn.Module):
    """Holds the frozen statistics as buffers (so they are in every checkpoint) and applies them."""

    def __init__(
        self,
        num_dimensions: int,
        mode: str = "global",
        clip: float | None = 5.0,
        eps: float = 1e-6,
        min_count: int = 8,
        min_std: float = 1e-6,
        fallback_std: float | str = 1.0,
        length_decoupled: Sequence[bool] | None = None,  # (K,) per dimension (see the module doc)
    ):
        super().__init__()
        check_fallback(fallback_std)
        decoupled = [bool(d) for d in (length_decoupled or [False] * num_dimensions)]
        if len(decoupled) != num_dimensions:
            raise ValueError(f"length_decoupled: {len(decoupled)} flags for {num_dimensions} dimensions")
        if mode not in MODES:
            raise ValueError(f"optimization.normalization.mode: got {mode!r}, expected one of {MODES}")
        self.mode, self.clip, self.eps = mode, clip, eps
        self.min_count, self.min_std, self.fallback_std = min_count, min_std, fallback_std
        self.register_buffer("mean", torch.zeros(num_dimensions))
        self.register_buffer("std", torch.ones(num_dimensions))
        self.register_buffer("count", torch.zeros(num_dimensions, dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("decoupled", torch.tensor(decoupled, dtype=torch.bool), persistent=False)
        self.register_buffer("length_slope", torch.zeros(num_dimensions))  # beta_k (0: not decoupled)
        self.register_buffer("length_mean", torch.zeros(()))  # lbar, calibration mean length (tokens)
        self.status: list[str] = ["uncalibrated"] * num_dimensions
        self.prompt_means: dict[str, list[float]] = {}

    def residual(self, scores: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """(N, K) scores minus beta_k (l - lbar) on the decoupled dimensions (lengths None: at lbar)."""
        if lengths is None or not bool(self.decoupled.any()):
            return scores
        shift = (upcast(lengths).to(scores.dtype) - self.length_mean.to(scores.dtype)).unsqueeze(1)  # (N, 1)
        return scores - shift * self.length_slope.to(scores.dtype)

    def fit(
        self,
        scores: torch.Tensor,
        prompt_ids: Sequence[str] | None = None,
        lengths: torch.Tensor | None = None,  # (M,) completion tokens: needed for length_decoupled
    ) -> ReferenceStats:
        """Freeze statistics from the reference's raw scores (M, K) (already gathered over ranks)."""
        if bool(self.decoupled.any()):
            if lengths is None:
                raise ValueError("length_decoupled normalization needs the calibration answers' lengths")
            slope = within_prompt_slope(scores, lengths, prompt_ids)
            self.length_slope.copy_(torch.where(self.decoupled, slope, torch.zeros_like(slope)))
            self.length_mean.copy_(upcast(lengths).float().mean())
            scores = self.residual(scores, lengths)
        stats = reference_stats(scores, self.min_count, self.min_std, self.fallback_std)
        self.mean.copy_(stats.mean)
        self.std.copy_(stats.std)
        self.count.copy_(stats.count)
        self.fitted.fill_(True)
        self.status = stats.status
        self.prompt_means = {}
        if self.mode == "per_prompt":
            if prompt_ids is None:
                raise ValueError("per_prompt normalization needs the prompt id of each calibration score")
            for pid in dict.fromkeys(prompt_ids):
                rows = scores[[i for i, p in enumerate(prompt_ids) if p == pid]]  # (G, K)
                m = torch.nanmean(rows, 0)
                self.prompt_means[pid] = torch.where(torch.isnan(m), stats.mean, m).tolist()
        return stats

    def anchors(self, prompt_ids: Sequence[str] | None, n: int) -> torch.Tensor:
        """The mu each sample is centred on: (K,) global, or (N, K) per prompt."""
        if self.mode == "global" or prompt_ids is None:
            return self.mean
        rows = [self.prompt_means.get(pid) for pid in prompt_ids]
        return torch.stack(
            [
                torch.tensor(r, dtype=self.mean.dtype, device=self.mean.device) if r else self.mean
                for r in rows
            ]
        )

    def forward(
        self,
        scores: torch.Tensor,
        prompt_ids: Sequence[str] | None = None,
        lengths: torch.Tensor | None = None,  # (N,) completion tokens; None = at the mean length
    ) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError(
                "Reference-Frozen Normalization is not calibrated: add the reward-rescaling callback "
                "(optimization=rfn or rfn_tadw set it up) or call fit() first"
            )
        scores = self.residual(scores, lengths)
        return normalize(scores, self.anchors(prompt_ids, scores.size(0)), self.std, self.clip, self.eps)

    # per-prompt anchors and statuses travel in the state dict (and so in checkpoints)
    def get_extra_state(self) -> dict:
        return {"status": list(self.status), "prompt_means": dict(self.prompt_means)}

    def set_extra_state(self, state: dict) -> None:
        self.status = list(state.get("status", self.status))
        self.prompt_means = dict(state.get("prompt_means", {}))


# ---------------------------------------------------------------- frozen statistics on disk
STATISTICS_FILE = "rfn_statistics.safetensors"
STATISTICS_META = "rfn_statistics.json"


def save_statistics(normalizer: ReferenceFrozenNormalizer, names: Sequence[str], directory: str) -> str:
    """Write the frozen statistics (safetensors buffers + JSON statuses and anchors); return the dir.

    The pipeline's `rfn_calibration` stage writes them; the RL stage loads them instead of calibrating.
    """
    import json
    import os

    from safetensors.torch import save_file

    if not bool(normalizer.fitted):
        raise ValueError("save_statistics: the normalizer is not calibrated yet")
    os.makedirs(directory, exist_ok=True)
    keys = ("mean", "std", "count", "length_slope", "length_mean")
    tensors = {k: getattr(normalizer, k).detach().cpu().contiguous() for k in keys}
    save_file(tensors, os.path.join(directory, STATISTICS_FILE))
    meta = {
        "dimensions": list(names),
        "mode": normalizer.mode,
        "status": list(normalizer.status),
        "prompt_means": normalizer.prompt_means,
    }
    with open(os.path.join(directory, STATISTICS_META), "w") as fh:
        json.dump(meta, fh, indent=2)
    return directory


def load_statistics(normalizer: ReferenceFrozenNormalizer, names: Sequence[str], directory: str) -> None:
    """Load statistics written by `save_statistics` into `normalizer` (same dimensions, same order)."""
    import json
    import os

    from safetensors.torch import load_file

    meta_path = os.path.join(directory, STATISTICS_META)
    if not os.path.exists(meta_path):
        raise ConfigError(
            f"optimization.normalization.statistics_path: {directory!r} holds no {STATISTICS_META}. "
            "Fix: point it at the output of the rfn_calibration stage, or set it to null to calibrate"
        )
    with open(meta_path) as fh:
        meta = json.load(fh)
    if list(meta["dimensions"]) != list(names):
        raise ConfigError(
            f"optimization.normalization.statistics_path: {directory!r} was calibrated for dimensions "
            f"{meta['dimensions']}, but the matrix has {list(names)}. Fix: recalibrate (statistics_path=null)"
        )
    if meta["mode"] != normalizer.mode:
        raise ConfigError(
            f"optimization.normalization.mode: the statistics in {directory!r} are {meta['mode']!r}, the "
            f"config asks for {normalizer.mode!r}. Fix: use the same mode or recalibrate"
        )
    tensors = load_file(os.path.join(directory, STATISTICS_FILE))
    for key in ("mean", "std", "count"):
        getattr(normalizer, key).copy_(tensors[key])
    for key in ("length_slope", "length_mean"):  # absent in statistics saved before length decoupling
        if key in tensors:
            getattr(normalizer, key).copy_(tensors[key])
    normalizer.fitted.fill_(True)
    normalizer.status = list(meta["status"])
    normalizer.prompt_means = dict(meta["prompt_means"])
