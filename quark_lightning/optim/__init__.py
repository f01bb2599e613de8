"""Pure math of the reward side: aggregation of the matrix into one scalar, and group advantages."""
