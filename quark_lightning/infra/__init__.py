"""What every trainer here stands on: errors, checkpoints and random streams, distributed gathers, strategies,
loggers, optimizers and learning-rate schedules. Nothing in `infra` knows about rewards or the matrix."""
