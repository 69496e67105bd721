"""Losses compute in their input's precision, at least float32: half/bfloat16 inputs (autocast) are
upcast for a stable softmax/normalisation, float64 stays float64 (so float64 checks of a loss are
float64 checks)."""

from __future__ import annotations

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
