"""Uncertainty of an accuracy measured on n images."""

from __future__ import annotations

import math


def wilson_interval(acc: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``acc`` observed on ``n`` trials: unlike
    acc +- z sqrt(acc (1 - acc) / n) it stays inside [0, 1] and is not empty at 0% or 100%, which
    matters on the few held-out images of a small labeled set."""
    if n <= 0:
        return 0.0, 1.0
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
