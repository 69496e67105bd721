"""Virtual screening: the baseline every molecule-design method must beat (PMO's "Screening",
Gao et al., NeurIPS 2022 Datasets and Benchmarks).

No model and no search: molecules are drawn from the library (ZINC 250k) uniformly without
replacement, in an order fixed by the seed, and scored until the oracle's budget is spent. A
method that learns from its calls should leave this curve behind; one that does not has learned
nothing a random draw from the library does not give.
"""

from __future__ import annotations

import random

from .oracle import Oracle


def screening(oracle: Oracle, library: list[str], seed: int = 0) -> list[tuple[str, float]]:
    """Score library molecules in a seeded random order until the budget is spent (or the
    library is); returns the oracle's best ten [(canonical SMILES, score)]. Invalid or repeated
    molecules cost no calls (the oracle's rules), so the draw simply continues past them."""
    order = list(range(len(library)))
    random.Random(seed).shuffle(order)
    for i in order:
        if oracle.exhausted:
            break
        oracle.score(library[i])
    return oracle.best(10)
