"""The floating-point width of the RL numerics: float32, or float64 for a `trainer.precision=64-true` run.

Sampling, log-probabilities, reward scores, normalization, TADW and advantages are computed in at least
float32: a bf16 / fp16 model's logits are upcast, as before. Under `trainer.precision=64-true` the run's
default float type is float64 (`run_precision`), and `upcast` keeps every one of those quantities in
float64, where a bare `.float()` would round them down to float32.

Why a float64 run exists: the cross-processor rounding of float32 kernels (vector width, BLAS code path)
moves trained parameters by ~1e-5 relative after a few AdamW steps, which is what a golden-number test
sees; in float64 the same differences are ~1e-16 per operation. `tests/shaping/test_pinning.py` runs in float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DOUBLE_PRECISIONS = ("64", "64-true")  # Lightning's names for a float64 run


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16 / fp16 / fp32 inputs, float64 when the input or the run is float64."""
    floating = dtype if dtype.is_floating_point else torch.get_default_dtype()
    return torch.promote_types(floating, torch.get_default_dtype())


def upcast(t: torch.Tensor) -> torch.Tensor:
    """`t` in the RL compute dtype (`compute_dtype`); the replacement for `.float()` in the numerics."""
    return t.to(compute_dtype(t.dtype))


@contextlib.contextmanager
def run_precision(precision: object) -> Iterator[None]:
    """While a run lasts, tensors created without a dtype are float64 when `precision` is 64-true.

    Lightning's DoublePrecision converts the module to float64 and sets the default dtype inside
    `training_step` only; callbacks (calibration, the closed loop) and the rollout run outside it, so the
    run sets it for its whole length. The previous default is restored afterwards.
    """
    before = torch.get_default_dtype()
    if str(precision) in DOUBLE_PRECISIONS:
        torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
