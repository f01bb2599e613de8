"""Rollout engines: prompts -> G sampled completions each. HF `generate` now; others behind the same API."""
