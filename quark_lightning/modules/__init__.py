"""LightningModules: GRPO (policy + reference + reward models) and SFT."""
