"""Schedules as pure functions of training progress (step / total_steps in [0, 1])."""

from __future__ import annotations

import math


def warmup_cosine(progress: float, warmup: float, final_ratio: float = 0.0) -> float:
    """Multiplier in [final_ratio, 1]: linear warm-up over the first ``warmup`` fraction of training,
    then a half cosine down to ``final_ratio`` (SimCLR, Chen et al., 2020, App. B.1)."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    t = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
