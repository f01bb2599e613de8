"""`RewardModelModule`: the Lightning module that trains a `ScalarRewardModel` on preference pairs.

The loss is the ties objective (`quark_lightning.reward_model.ties_loss`) on the batches of
`pair_datasets` (tokenized pairs, or a frozen backbone's cached features); AdamW by default. It logs
`rm/loss`, `rm/loss_diff`, `rm/loss_same`, `rm/loss_center`, `rm/accuracy` and, on the held-out split,
`val/loss`, `val/pair_accuracy`, `val/tie_accuracy`, `val/tie_abs_delta`, `val/pair_margin`,
`val/reward_std`.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from quark_lightning.infra.optimizers import OptimizerFactory, SchedulerFactory, configure_optimizer
from quark_lightning.reward_model.pair_datasets import pair_rewards
from quark_lightning.reward_model.scalar_rm import ScalarRewardModel
from quark_lightning.reward_model.ties_loss import preference_metrics, ties_objective


class RewardModelModule(L.LightningModule):
    """Trains a ScalarRewardModel on pairs with J = L_diff + λ·L_same (+ c·L_center), AdamW."""

    def __init__(
        self,
        model: ScalarRewardModel,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        ties_lambda: float = 1.0,
        ties_margin: float = 0.0,
        literal_paper_form: bool = False,
        center_rewards_coefficient: float = 0.0,
        tie_threshold: float = 0.5,
        head_lr: float | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ):
        """optimizer / lr_scheduler: the built `reward_model.optimizer` / `.lr_scheduler` nodes
        (infra/optimizers.py); None: AdamW(lr, weight_decay) and linear_warmup(warmup_steps), what the
        nodes ship with. The optimizer gets two parameter groups: backbone at `lr`, head at `head_lr`."""
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.head_lr = head_lr
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.loss_kwargs = dict(
            ties_lambda=ties_lambda,
            ties_margin=ties_margin,
            literal_paper_form=literal_paper_form,
            center_rewards_coefficient=center_rewards_coefficient,
        )
        self.tie_threshold = tie_threshold
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_train_start(self) -> None:
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes (a frozen
        # backbone stays in eval: ScalarRewardModel.train)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        r_a, r_b = pair_rewards(self.model, batch)  # (B,), (B,)
        out = ties_objective(r_a, r_b, batch["pref"], **self.loss_kwargs)
        n = batch["pref"].size(0)
        diff = batch["pref"] != 0
        signed = ((r_a - r_b) * batch["pref"].float())[diff]
        metrics = {
            "rm/loss_diff": out.loss_diff,
            "rm/loss_same": out.loss_same,
            "rm/loss_center": out.loss_center,
        }
        if diff.any():
            metrics["rm/accuracy"] = (signed > 0).float().mean()
        self.log_dict(metrics, on_step=True, batch_size=n)
        self.log("rm/loss", out.loss, prog_bar=True, on_step=True, batch_size=n)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        r_a, r_b = pair_rewards(self.model, batch)
        out = ties_objective(r_a, r_b, batch["pref"], **self.loss_kwargs)
        self.log("val/loss", out.loss, batch_size=batch["pref"].size(0))
        self._val.append((r_a.detach().cpu(), r_b.detach().cpu(), batch["pref"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        r_a, r_b, pref = (torch.cat(x) for x in zip(*self._val))
        self._val.clear()
        metrics = preference_metrics(r_a, r_b, pref, self.tie_threshold)
        for name in ("pair_accuracy", "tie_accuracy", "tie_abs_delta", "pair_margin", "reward_std"):
            if not math.isnan(metrics[name]):
                self.log(f"val/{name}", metrics[name], prog_bar=name == "pair_accuracy")

    def configure_optimizers(self):
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        body = [p for p in self.model.backbone.parameters() if p.requires_grad]
        groups = [{"params": body, "lr": self.lr}, {"params": head, "lr": self.head_lr or self.lr}]
        return configure_optimizer(
            [g for g in groups if g["params"]],
            self.optimizer_factory,
            self.lr_scheduler_factory,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
        )
