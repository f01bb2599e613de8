"""The closed loop (paper section 3.3): observable metrics -> attributable diagnosis -> reward update.

`metrics` observes and diagnoses one evaluation, `item_actions` turns failing rubric items and format rules
into new weights, `patterns` mines bad phrases from the policy's failing answers. `callbacks/closed_loop.py`
drives them during training."""
