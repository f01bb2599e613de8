"""Tri-Factor Adaptive Dynamic Weighting (TADW): weakness-oriented, risk-prioritized, redundancy-reducing.

Interpretation (the paper names the three properties but publishes no formula; the full statement and
why it changed in the second edition: docs/paper-interpretation.md#tadw). Every step, from the step's
normalized rewards z (N, K) (RFN units: 0 = reference level) in groups of G contiguous rows, gathered over
all ranks first:

  active      a_k = p_k > 0 and z_k varies inside at least one group (`varies_within_groups`, in
              shaping/aggregation.py): a dimension that does not apply, or is constant in every group,
              cannot move an advantage
  weakness    s_k <- (1 - m) s_k + m * nanmean(z_k)                       (EMA, momentum m = 0.1)
              f_weak_k = 1 + max(0, target_z_k - s_k)                      (mode "target_gap"; a dimension
                         without a target: the expert reference answers' mean z, `reference_target`)
           or f_weak_k = K * softmax(-s / tau_w)_k                         (mode "softmax", the first edition)
  risk        f_risk_k = rho_k ** alpha * (1 + gamma * v_k)                (rho = the dimension's risk level)
              v_k = share of applicable samples violating the dimension (raw score below its target), only
              for dimensions with rho_k >= high_risk (safety-type); 0 for the others
  redundancy  C = Pearson correlation of the group-centred z (NaN -> 0); EMA over steps
              f_red_k = 1 / (1 + sum_{j != k} max(0, C_kj - c0))           (c0 = 0: any positive correlation)
  combine     w_hat = f_weak * f_risk * f_red * gain * p                  (p_k = the configured static weight)
              w_new = w_min + (1 - K'' w_min) * w_hat / sum(w_hat) over the K'' active dimensions, 0 elsewhere
              w <- (1 - eta) w + eta w_new                                 (smoothing; eta 0.3 in the config)

`initialize` starts the state from the calibration batch (the reference policy's own answers and the
prompts' expert reference answers) instead of the risk prior rho_k p_k, which remains the start when no
calibration runs (statistics loaded from a file). The step's reward uses w renormalized over the
dimensions active in that batch (aggregation.reference_frozen_active), so an inactive one weighs exactly 0.

The floor is applied to the target before smoothing: a convex combination of floored weight vectors is
floored and sums to 1, so the floor holds without compounding. The closed-loop supervision callback may
multiply w_hat by a per-dimension `gain` (RewardShaping's `loop_gain` buffer, shaping/reward_shaping.py). An exact
duplicate pair has C = 1, so each copy gets f_red = 1/2. Any factor can be switched off (factor = 1).

Static weights under TADW (interpretation): a dimension's configured `weight` p_k is a prior multiplier
on its TADW weight, so `weight: 2` doubles what TADW would give it, and `weight: 0` switches it off:
its weight is exactly 0 at every step and it takes no part in the redundancy factor, while it is still
scored and logged. Drop a dimension entirely with `matrix.dimensions.NAME=null`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from quark_lightning.infra.precision import upcast
from quark_lightning.shaping.aggregation import centered_within_groups, varies_within_groups
from quark_lightning.shaping.shaping_settings import WEAKNESS_MODES


def weakness_factor(
    ema_score: torch.Tensor, tau: float, mode: str, target_z: torch.Tensor | None
) -> torch.Tensor:
    """(K,) EMA of normalized scores -> (K,) factor, larger where the policy lags."""
    K = ema_score.numel()
    if mode == "softmax":
        return K * torch.softmax(-ema_score / tau, dim=0)
    if target_z is None:
        raise ValueError("weakness mode 'target_gap' needs targets")
    gap = torch.nan_to_num(target_z - ema_score, nan=0.0)
    return 1.0 + gap.clamp(min=0.0)


def risk_factor(
    risk: torch.Tensor, violation: torch.Tensor, alpha: float, gamma: float, high_risk: float
) -> torch.Tensor:
    """(K,) priors and (K,) violation rates -> (K,) factor; violations raise only high-risk dimensions."""
    dynamic = torch.where(
        risk >= high_risk, 1.0 + gamma * torch.nan_to_num(violation, nan=0.0), torch.ones_like(risk)
    )
    return risk.pow(alpha) * dynamic


def correlation(z: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the columns of z (N, K), NaN read as 0; constant columns correlate 0.  -> (K, K)"""
    x = torch.nan_to_num(upcast(z), nan=0.0)
    x = x - x.mean(0, keepdim=True)
    norm = x.norm(dim=0)  # (K,)
    denom = norm.unsqueeze(0) * norm.unsqueeze(1)
    corr = (x.T @ x) / denom.clamp(min=1e-12)
    corr = torch.where(denom > 1e-12, corr, torch.zeros_like(corr))
    return corr.fill_diagonal_(1.0)


def redundancy_factor(corr: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """(K, K) correlations -> (K,) discount 1 / (1 + sum of positive off-diagonal correlation above threshold)."""
    off = (corr - threshold).clamp(min=0.0)
    off = off - torch.diag(torch.diagonal(off))
    return 1.0 / (1.0 + off.sum(1))


def floor_weights(w: torch.Tensor, w_min: float, active: torch.Tensor | None = None) -> torch.Tensor:
    """Renormalize to sum 1 with every active weight >= w_min and inactive ones exactly 0 (requires
    K_active * w_min < 1).  (K,), (K,) bool -> (K,)"""
    active = torch.ones_like(w, dtype=torch.bool) if active is None else active
    K = int(active.sum())
    w = torch.where(active, w, torch.zeros_like(w))
    return torch.where(active, w_min + (1.0 - K * w_min) * w / w.sum(), torch.zeros_like(w))


def violation_rates(raw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of applicable samples whose raw score is below the dimension's target.  (N, K), (K,) -> (K,)"""
    applicable = ~torch.isnan(raw) & ~torch.isnan(targets).unsqueeze(0)
    below = (raw < targets.unsqueeze(0)) & applicable
    return below.sum(0) / applicable.sum(0).clamp(min=1)


@dataclass
class TADWFactors:
    weakness: torch.Tensor  # (K,)
    risk: torch.Tensor  # (K,)
    redundancy: torch.Tensor  # (K,)
    violation: torch.Tensor  # (K,)


class TriFactorWeighting(nn.Module):
    """TADW state (weights, EMAs) as buffers, so it is saved in checkpoints and restored exactly."""

    def __init__(
        self,
        risk: Sequence[float],
        targets: Sequence[float | None] | None = None,
        weakness: bool = True,
        risk_priority: bool = True,
        redundancy: bool = True,
        weakness_mode: str = "softmax",
        tau: float = 1.0,
        score_momentum: float = 0.1,
        alpha: float = 1.0,
        gamma: float = 1.0,
        high_risk: float = 3.0,
        corr_momentum: float = 0.1,
        corr_threshold: float = 0.0,
        eta: float = 0.1,
        w_min: float = 0.02,
        prior: Sequence[float] | None = None,
    ):
        super().__init__()
        K = len(risk)
        prior_t = torch.ones(K) if prior is None else torch.tensor([float(p) for p in prior])
        if prior_t.numel() != K or bool((prior_t < 0).any()) or not bool((prior_t > 0).any()):
            raise ValueError(
                f"matrix.dimensions.*.weight: the static weights {prior_t.tolist()} must be {K} numbers >= 0 with at least one > 0"
            )
        if weakness_mode not in WEAKNESS_MODES:
            raise ValueError(
                f"optimization.weighting.weakness_mode: got {weakness_mode!r}, expected one of {WEAKNESS_MODES}"
            )
        n_active = int((prior_t > 0).sum())
        if not 0 < w_min * n_active < 1:
            raise ValueError(
                f"optimization.weighting.w_min: {w_min} x {n_active} active dimensions must be in (0, 1)"
            )
        self.use_weakness, self.use_risk, self.use_redundancy = weakness, risk_priority, redundancy
        self.weakness_mode, self.tau, self.score_momentum = weakness_mode, tau, score_momentum
        self.alpha, self.gamma, self.high_risk = alpha, gamma, high_risk
        self.corr_momentum, self.corr_threshold = corr_momentum, corr_threshold
        self.eta, self.w_min = eta, w_min
        risk_t = torch.tensor([float(r) for r in risk])
        target_t = torch.tensor([float("nan") if t is None else float(t) for t in (targets or [None] * K)])
        # config, not checkpoint state: a resumed run uses today's risk levels and targets
        self.register_buffer("risk", risk_t, persistent=False)
        self.register_buffer("targets", target_t, persistent=False)  # raw units
        # the static weights `weights` were computed under (0 = switched off); in the checkpoint so that a
        # resume with changed matrix weights rebases `weights` to the configured ones (see `rebase`)
        self.register_buffer("prior", prior_t)
        self.configured_prior = prior_t.clone()
        self.register_buffer("weights", floor_weights(risk_t * prior_t, w_min, prior_t > 0))
        self.register_buffer("ema_score", torch.zeros(K))
        self.register_buffer("ema_corr", torch.eye(K))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # target of a dimension without one (reward models), in RFN units: the mean z of the expert
        # reference answers of the calibration prompts (NaN until `initialize`)
        self.register_buffer("reference_target", torch.full((K,), float("nan")))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.rebase(self.configured_prior)  # the checkpoint's prior -> today's configured static weights

    @torch.no_grad()
    def rebase(self, prior: torch.Tensor) -> None:
        """The static weights changed since `weights` were computed (a resume after editing a matrix
        weight): w_k <- w_k * prior_k / old_prior_k (a newly switched-on dimension starts at w_min, a
        switched-off one gets 0), renormalized and floored. The adapted part of each weight (weakness,
        risk, redundancy, loop gain) is kept; the configured part is today's."""
        prior = prior.to(self.prior)
        if torch.equal(prior, self.prior):
            return
        old = self.prior
        ratio = prior / torch.where(old > 0, old, torch.ones_like(old))
        scaled = torch.where(old > 0, self.weights * ratio, torch.full_like(prior, self.w_min))
        self.weights.copy_(floor_weights(scaled, self.w_min, prior > 0))
        self.prior.copy_(prior)

    def active_corr(self) -> torch.Tensor:
        """(K, K) the correlation EMA among active dimensions only: a switched-off one (prior 0) makes
        no other dimension look redundant."""
        active = (self.prior > 0).to(self.ema_corr.dtype)
        return self.ema_corr * active.unsqueeze(0) * active.unsqueeze(1)

    def full_target_z(self, target_z: torch.Tensor | None) -> torch.Tensor | None:
        """(K,) the targets in RFN units, the reference answers' level where a dimension has none."""
        if target_z is None:
            return None
        return torch.where(torch.isnan(target_z), self.reference_target.to(target_z), target_z)

    def factors(self, z: torch.Tensor, raw: torch.Tensor, target_z: torch.Tensor | None) -> TADWFactors:
        ones = torch.ones_like(self.risk)
        violation = violation_rates(raw, self.targets)
        return TADWFactors(
            weakness=weakness_factor(
                self.ema_score, self.tau, self.weakness_mode, self.full_target_z(target_z)
            )
            if self.use_weakness
            else ones,
            risk=risk_factor(self.risk, violation, self.alpha, self.gamma, self.high_risk)
            if self.use_risk
            else ones,
            redundancy=redundancy_factor(self.active_corr(), self.corr_threshold)
            if self.use_redundancy
            else ones,
            violation=violation,
        )

    def target_weights(self, f: TADWFactors, active: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        """(K,) w_new: the product of the factors over the active dimensions, floored, sums to 1."""
        product = f.weakness * f.risk * f.redundancy * (1.0 if gain is None else gain) * self.prior
        return floor_weights(product, self.w_min, active)

    @torch.no_grad()
    def initialize(
        self,
        z: torch.Tensor,
        raw: torch.Tensor,
        group_size: int,
        target_z: torch.Tensor | None = None,
        reference_z: torch.Tensor | None = None,
    ) -> TADWFactors:
        """Start from the calibration batch instead of the risk prior: z (M, K) and raw (M, K) are the
        reference policy's own answers (G per prompt, contiguous), `reference_z` (P, K) the expert
        reference answers' z. The EMAs are set from it and the weights to its w_new, unsmoothed."""
        if reference_z is not None:
            self.reference_target.copy_(torch.nanmean(upcast(reference_z), 0))
        self.ema_score.copy_(torch.nan_to_num(torch.nanmean(upcast(z), 0), nan=0.0))
        self.ema_corr.copy_(correlation(centered_within_groups(z, group_size)))
        f = self.factors(z, raw, target_z)
        active = (self.prior > 0) & varies_within_groups(z, group_size)
        if bool(active.any()):
            self.weights.copy_(self.target_weights(f, active, None))
        self.initialized.fill_(True)
        return f

    @torch.no_grad()
    def update(
        self,
        z: torch.Tensor,
        raw: torch.Tensor,
        target_z: torch.Tensor | None = None,
        gain: torch.Tensor | None = None,
        group_size: int | None = None,
    ) -> TADWFactors:
        """One step: z (N, K) normalized and raw (N, K) scores of the whole (gathered) batch, its groups of
        `group_size` contiguous rows (None: the batch is one group); `gain` (K,) the closed loop's
        per-dimension gain (None = 1). A dimension that does not vary inside any group of the batch
        (never applies, or is constant) gets w_new = 0 and the others renormalize."""
        G = group_size or z.size(0)
        col_mean = torch.nanmean(upcast(z), 0)
        col_mean = torch.where(torch.isnan(col_mean), self.ema_score, col_mean)  # no sample: keep the EMA
        first = int(self.steps) == 0 and not bool(self.initialized)
        m, mc = (1.0, 1.0) if first else (self.score_momentum, self.corr_momentum)
        self.ema_score.mul_(1 - m).add_(m * col_mean)
        self.ema_corr.mul_(1 - mc).add_(mc * correlation(centered_within_groups(z, G)))
        f = self.factors(z, raw, target_z)
        active = (self.prior > 0) & varies_within_groups(z, G)
        if bool(active.any()):  # else nothing in the batch can move an advantage: keep the weights
            w_new = self.target_weights(f, active, gain)  # (K,) sums to 1; inactive dimensions 0
            self.weights.copy_((1 - self.eta) * self.weights + self.eta * w_new)
        self.steps.add_(1)
        return f
