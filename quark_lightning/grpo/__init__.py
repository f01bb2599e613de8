"""GRPO, the RL step: the LightningModule (`grpo_module`), the loss as pure functions (`loss`), token log-probs
with each prompt computed once (`shared_prefix`), DAPO dynamic sampling, and the numerics' float width."""
