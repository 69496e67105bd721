"""Checks on a model file's metadata before a network is built from it: a file from elsewhere
is not trusted to be sensible (a width of 1e5 would allocate terabytes; a NaN mean would
predict NaN)."""

from __future__ import annotations

import json

import numpy as np

from .pretrain import RunDirError

# what a model file's metadata may say (a file from elsewhere is not trusted to be sensible)
META_RANGES = {"width": (1 / 64, 16), "image_size": (8, 1024), "input_size": (8, 1024),
               "patch_size": (1, 64), "depth": (0, 48)}


def check_model_metadata(meta: dict, path) -> None:
    """Refuse metadata that would build an absurd network (width 1e5: terabytes) or feed it
    nonsense (a NaN mean): one line naming the file and the field."""
    def bad(field, why):
        raise RunDirError(f"{path}: metadata field '{field}' {why}; this model file is damaged or "
                          f"not made by selfsup: export or train it again")

    for k in ("backbone", "width", "image_size", "classes", "mean", "std"):
        if k not in meta:
            bad(k, "is missing")
    for k, (lo, hi) in META_RANGES.items():
        if k in meta:
            try:
                v = float(meta[k])
            except ValueError:
                bad(k, f"is {meta[k][:20]!r}, not a number")
            if not lo <= v <= hi:
                bad(k, f"is {meta[k][:20]}, outside [{lo:g}, {hi:g}]")
    if meta.get("pool", "cls") not in ("cls", "mean"):
        bad("pool", f"is {meta['pool'][:20]!r}, not cls or mean")
    if meta.get("flip_tta", "false") not in ("true", "false"):
        bad("flip_tta", f"is {meta['flip_tta'][:20]!r}, not true or false")
    try:
        classes = json.loads(meta["classes"])
        mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    except ValueError:
        bad("classes/mean/std", "is not JSON")
    if not (isinstance(classes, list) and 2 <= len(classes) <= 100_000
            and all(isinstance(c, str) for c in classes)):
        bad("classes", "is not a list of 2 or more class names")
    for k, v in (("mean", mean), ("std", std)):
        if not (isinstance(v, list) and len(v) == 3 and all(
                isinstance(x, (int, float)) and np.isfinite(x) for x in v)):
            bad(k, "is not three finite numbers")
    if min(std) <= 0:
        bad("std", "has a value <= 0")
