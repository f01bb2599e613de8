"""The closed loop (paper section 3.3): observable metrics -> attributable diagnosis -> reward update.

    metrics             observes and diagnoses one evaluation (per dimension, category, area; findings)
    dimension_actions   per-dimension loop gains ("letting go" included) and the area curriculum
    item_actions        rubric-item, format-rule and prompt-sampling weights
    patterns            bad phrases mined from the policy's failing held-out answers
    loop_state          what the loop decided: RewardShaping owns it, the scorers and the sampler get it
    loop_settings       the callback's settings, validated once

`callbacks/closed_loop.py` drives them during training. The rules (interpretation: the paper names the
loop, not its rules):

- weights: a dimension whose held-out pass rate is below `pass_target` gets a loop gain
  g_k = 1 + `gain_strength` * violation_rate_k; at or above it, g_k = 1 (it stops being pushed). With TADW
  the gain multiplies the tri-factor product; with static weights the weights become base_weight_k * g_k.
- letting go: a failing dimension whose held-out mean moved less than `min_change` over the last
  `patience` evaluations gets g_k = 1 + (g_prev - 1) * `gain_decay` instead, decaying toward 1 (the weight
  goes to dimensions the policy can still move); it gets its full gain back as soon as it moves again.
- format rules (item level): for a failing format dimension, each rule's weight inside the format score
  becomes 1 + `rule_gain` * (share of held-out answers breaking it); back to 1 once it is not broken.
- reward-model dimensions (no absolute target): a held-out answer passes where it scores at least as high
  as the prompt's reference answer (`reference_targets`), so they get gains like the others.
- online bad patterns (item level): phrases over-represented in failing held-out answers (log-odds against
  passing ones), in no reference, join the bad-pattern scorer's list with their provenance, at most
  `max_mined_patterns`, and expire after `pattern_expiry` evaluations in which no answer shows them.
- rubric items and prompts (item level): held-out prompts are never trained on, so each evaluation also
  answers `probe_prompts` training prompts (greedy, outside any gradient step): a missed essential or a hit
  pitfall weighs more inside that prompt's rubric score; a probed prompt whose answer fails a gate is drawn
  1 + `prompt_gain` times as often. The held-out split stays the measurement: probe answers never enter it.
- curriculum: each clinical area's sampling weight becomes (1 - pass_rate_area + `curriculum_floor`) **
  `curriculum_strength`, so weak areas are drawn more often.
- `item_level: false` keeps only the gains and the curriculum; `update: false` evaluates and reports,
  changing nothing (the no-loop baseline of benchmarks/closed_loop.py).
"""
