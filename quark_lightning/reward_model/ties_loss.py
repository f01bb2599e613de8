"""Bradley–Terry reward-model loss with ties (the ORM of the paper's correctness dimension).

Objective over a batch of response pairs (x, y_1, y_2) scored by a scalar reward model r = r_θ(x, y):

    J       = L_diff + λ · L_same  [+ c · L_center]
    L_diff  = mean over preferred pairs (x, y_w, y_l) of  −log σ(r_w − r_l)
    L_same  = mean over tie pairs      (x, y_1, y_2) of  −log σ(m − |r_1 − r_2|)
    L_center= mean over all pairs of (r_1 + r_2)²                      (TRL's center_rewards_coefficient)

L_diff is the usual Bradley–Terry negative log-likelihood. L_same is our *interpretation* of the paper's
"margin-constrained" loss on "no significant difference" pairs: it is minimised by |r_1 − r_2| → 0 and
is already small once |Δ| is well below the margin m ≥ 0, so tied responses are pulled together.
λ ≥ 0 weighs it against L_diff (λ = 0 is plain Bradley–Terry, which ignores ties).

Departure from the paper, on purpose: the only public transcription of the paper's L_same is
−log σ(|r_1 − r_2|) (docs/paper-interpretation.md#orm-ties-loss). Minimising that *increases* |Δ| on tie pairs (it
pushes tied responses apart, the opposite of what a ties loss is for); a minus sign was most likely
dropped. `literal_paper_form=True` switches to that transcription so its effect can be measured; it
is not the default. With m = 0 our form is −log σ(−|Δ|), the literal form with the sign restored.

Centering (c > 0, default 0) is TRL's RewardTrainer term c · mean((r_chosen + r_rejected)²); it keeps
the rewards near zero mean, which BT alone leaves undetermined. Here it also covers tie pairs.

Means are taken separately over the preferred and the tie pairs of the batch (each term estimates its
own expectation); a term with no pairs in the batch is 0.

Pairs are encoded as (r_a, r_b, pref) with pref = +1 (a preferred), −1 (b preferred), 0 (tie).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PREFERENCE_CODES = {"a": 1, "b": -1, "tie": 0}


@dataclass
class TiesLoss:
    loss: torch.Tensor  # () total J
    loss_diff: torch.Tensor  # () L_diff (0 when the batch has no preferred pair)
    loss_same: torch.Tensor  # () L_same (0 when the batch has no tie pair)
    loss_center: torch.Tensor  # () L_center (unweighted)
    n_diff: int
    n_same: int


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values[mask]; 0 (with a gradient path) when the mask is empty.  (B,), (B,) -> ()."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def diff_loss(r_win: torch.Tensor, r_lose: torch.Tensor) -> torch.Tensor:
    """−log σ(r_w − r_l) per preferred pair.  (P,), (P,) -> (P,)."""
    return -F.logsigmoid(r_win - r_lose)


def same_loss(
    r_1: torch.Tensor, r_2: torch.Tensor, margin: float = 0.0, literal_paper_form: bool = False
) -> torch.Tensor:
    """Tie-pair loss per pair.  (T,), (T,) -> (T,).

    default:             −log σ(m − |r_1 − r_2|)   pulls tied scores together
    literal_paper_form:  −log σ(|r_1 − r_2|)       the public transcription; pushes them apart
    """
    abs_delta = (r_1 - r_2).abs()  # (T,)
    if literal_paper_form:
        return -F.logsigmoid(abs_delta)
    return -F.logsigmoid(margin - abs_delta)


def center_loss(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """(r_a + r_b)² per pair (TRL's centering term before its coefficient).  (B,), (B,) -> (B,)."""
    return (r_a + r_b) ** 2


def ties_objective(
    r_a: torch.Tensor,  # (B,) reward of response a
    r_b: torch.Tensor,  # (B,) reward of response b
    pref: torch.Tensor,  # (B,) +1 a preferred, −1 b preferred, 0 tie
    ties_lambda: float = 1.0,
    ties_margin: float = 0.0,
    literal_paper_form: bool = False,
    center_rewards_coefficient: float = 0.0,
) -> TiesLoss:
    """J = L_diff + λ·L_same + c·L_center over one batch of pairs (see the module docstring)."""
    pref = pref.to(r_a.device)
    is_diff = pref != 0  # (B,)
    is_tie = ~is_diff
    sign = pref.to(r_a.dtype)  # (B,)
    # r_w − r_l = sign · (r_a − r_b) for preferred pairs; computed for all rows, masked below
    l_diff = _masked_mean(-F.logsigmoid(sign * (r_a - r_b)), is_diff)
    l_same = _masked_mean(same_loss(r_a, r_b, ties_margin, literal_paper_form), is_tie)
    l_center = center_loss(r_a, r_b).mean() if r_a.numel() else r_a.sum()
    total = l_diff + ties_lambda * l_same
    if center_rewards_coefficient:
        total = total + center_rewards_coefficient * l_center
    return TiesLoss(
        loss=total,
        loss_diff=l_diff,
        loss_same=l_same,
        loss_center=l_center,
        n_diff=int(is_diff.sum()),
        n_same=int(is_tie.sum()),
    )


def preference_metrics(
    r_a: torch.Tensor,  # (B,)
    r_b: torch.Tensor,  # (B,)
    pref: torch.Tensor,  # (B,) +1 / −1 / 0
    tie_threshold: float = 0.5,
) -> dict[str, float]:
    """Held-out metrics of a scalar reward model on pairs (NaN where a metric has no pairs).

    pair_accuracy   share of preferred pairs with r_w > r_l (a exact tie of scores counts as wrong)
    pair_margin     mean r_w − r_l over preferred pairs
    tie_accuracy    share of tie pairs with |r_1 − r_2| < tie_threshold
    tie_abs_delta   mean |r_1 − r_2| over tie pairs
    reward_std      std of all scores (the scale the deltas above should be read against)
    """
    r_a, r_b, pref = r_a.detach().float().cpu(), r_b.detach().float().cpu(), pref.cpu()
    is_diff, is_tie = pref != 0, pref == 0
    signed = (r_a - r_b) * pref.float()  # (B,) r_w − r_l on preferred rows
    tie_abs = (r_a - r_b).abs()[is_tie]  # (T,)
    nan = math.nan
    scores = torch.cat([r_a, r_b])
    return {
        "pair_accuracy": float((signed[is_diff] > 0).float().mean()) if is_diff.any() else nan,
        "pair_margin": float(signed[is_diff].mean()) if is_diff.any() else nan,
        "tie_accuracy": float((tie_abs < tie_threshold).float().mean()) if is_tie.any() else nan,
        "tie_abs_delta": float(tie_abs.mean()) if is_tie.any() else nan,
        "reward_std": float(scores.std()) if scores.numel() > 1 else nan,
        "n_pairs": float(int(is_diff.sum())),
        "n_ties": float(int(is_tie.sum())),
    }
