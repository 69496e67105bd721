"""Flip test-time augmentation, paired on the same weights (BENCHMARKS.md section 6): each
classifier (a `fit`'s classifier/, a semi-supervised run) scores a labeled test folder with and
without averaging its logits over the mirror image; the discordant images give an exact McNemar
p-value. One JSON row per model on stdout.

    python benchmarks/flip_tta_pair.py /tmp/cifar_fit/test runs/fit_photos/*/classifier \\
        runs/fit_stage2/tta_s1_2300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("test", type=Path, help="a folder of labeled test images (class sub-folders)")
    ap.add_argument("models", type=Path, nargs="+")
    a = ap.parse_args()
    from selfsup.data import load_dataset
    from selfsup.evaluate.features import extract_features
    from selfsup.evaluate.stats import mcnemar_exact
    from selfsup.semisupervised import load_classifier

    data = {}
    for run in a.models:
        model, meta = load_classifier(run)
        size = int(meta["image_size"])
        if size not in data:
            data[size] = load_dataset("folder", path=str(a.test), image_size=size, progress=False)
        ds = data[size].aligned_to(json.loads(meta["classes"]))
        right = {}
        for on in (False, True):
            model.flip_tta = on
            right[on] = extract_features(model, ds, device="cpu").argmax(1) == ds.labels
        only_tta, only_plain = int((right[True] & ~right[False]).sum()), int(
            (right[False] & ~right[True]).sum())
        print(json.dumps({"model": str(run), "images": len(ds),
                          "acc_plain": float(np.mean(right[False])),
                          "acc_flip_tta": float(np.mean(right[True])),
                          "only_flip_tta_right": only_tta, "only_plain_right": only_plain,
                          "mcnemar_p": mcnemar_exact(only_tta, only_plain)}), flush=True)


if __name__ == "__main__":
    main()
