"""Mixed precision: ``train.precision`` → an autocast context for the network's forward passes.

Only the forward computations (inner-loop support passes and query passes) run under
``torch.autocast``; parameters, the inner loop's adapted weights (``w - lr * g`` with a
float32 ``g``: autocast's casts differentiate back to the parameter's dtype) and the
meta-gradients stay float32. ``fp32`` is no context at all, so float64 runs are untouched.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager

import torch

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device | str) -> ContextManager:
    """``torch.autocast`` on ``device``'s type in ``precision`` (a no-op context for ``fp32``)."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r} (expected one of {', '.join(DTYPES)})")
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=dtype)
