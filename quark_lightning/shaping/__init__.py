"""Reward shaping, the paper's method: the matrix's (N, K) scores -> one advantage per completion.

`rfn` Reference-Frozen Normalization, `calibration` its one-time calibration against the frozen reference,
`tadw` Tri-Factor Adaptive Dynamic Weighting, `aggregation` the aggregators (sum, gdpo, rfn, rfn_tadw) and
the risk gates, `advantages` group-relative advantages, `diagnostics` what moved them. `reward_shaping`
holds all of this state in one owner."""
