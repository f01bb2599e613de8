"""Entry points: `train` and `evaluate` (Hydra mains), `score` and `sweep`, and `run`, the one wiring function."""
