"""The paradigm end to end: foundational SFT -> expert behaviour cloning -> reward models -> RFN
calibration -> GRPO -> export, each stage in its own directory, finished stages skipped on a rerun
(`run_pipeline` in stages/runner.py). Importing a stage module runs nothing of the others: `cli/run.py`
uses `stages/sft.py` for the warm start, and `stages/kinds.py` uses `cli/run.py` for the GRPO stage."""
