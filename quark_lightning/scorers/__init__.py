"""Scorers: each turns (prompts, completions) into per-sample scores plus findings."""
