"""Deterministic, class-balanced labeled subsets and validation splits, by seed."""

from __future__ import annotations

import numpy as np

from .sources import DataError


def class_balanced_subset(labels: np.ndarray, per_class: int | None = None,
                          fraction: float | None = None, seed: int = 0,
                          classes: list[str] | None = None) -> np.ndarray:
    """Indices of N labeled images per class (``per_class``) or of a fraction of each class
    (``fraction``, at least one per class), chosen by ``seed``. Sorted."""
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class or fraction")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        k = per_class if per_class is not None else max(1, int(round(fraction * len(idx))))
        if k > len(idx):
            name = classes[c] if classes else str(c)
            raise DataError(f"class '{name}' has only {len(idx)} labeled images; asked for {k} "
                            f"per class (lower the labels-per-class setting)")
        chosen.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split labeled indices into (train, val), ``val_fraction`` of each class (at least one when
    the class has two or more images) going to val. Unlabeled (-1) entries go to train."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        k = int(round(val_fraction * len(idx)))
        if val_fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        val.append(rng.choice(idx, size=k, replace=False))
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx
