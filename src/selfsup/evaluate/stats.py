"""Uncertainty of an accuracy measured on n images, and paired comparisons on the same items."""

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


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for two classifiers (or planners) scored on the same
    items: ``only_a`` items right for A alone, ``only_b`` for B alone (the discordant pairs; the
    items both get right or both get wrong carry no information). Under "no difference" each
    discordant item goes either way with probability 1/2, so the p-value is the two-sided
    binomial tail: min(1, 2 P[X <= min(only_a, only_b)]), X ~ Binomial(only_a + only_b, 1/2)."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a} and {only_b}")
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


def paired_outcomes(a: list[bool], b: list[bool]) -> dict:
    """McNemar's test of two paired lists of outcomes (item i right / solved under A and B):
    the discordant counts, the rates and the exact two-sided p-value."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must have the same length ({len(a)} vs {len(b)})")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = max(1, len(a))
    return {"n": len(a), "rate_a": sum(map(bool, a)) / n, "rate_b": sum(map(bool, b)) / n,
            "only_a": only_a, "only_b": only_b, "p_mcnemar": mcnemar_exact(only_a, only_b)}
