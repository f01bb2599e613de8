"""Pure functions of the RL loss (log-probs, KL, clipped surrogate, loss reductions)."""
