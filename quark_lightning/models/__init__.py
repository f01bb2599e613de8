"""Loading HF causal LMs (any hub name or local dir), tiny models built in code, LoRA, the reference."""
