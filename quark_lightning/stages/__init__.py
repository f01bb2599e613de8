"""The paradigm end to end: foundational SFT -> expert behaviour cloning -> reward models -> RFN
calibration -> GRPO -> export, each stage in its own directory, finished stages skipped on a rerun."""

from quark_lightning.stages.runner import run_pipeline

__all__ = ["run_pipeline"]
