"""The evaluation protocol: features of a labeled train and test set -> kNN and linear probe."""

from __future__ import annotations

import numpy as np

from ..data.splits import class_balanced_subset
from .collapse import collapse_metrics
from .features import extract_features
from .knn import knn_accuracy
from .linear import linear_probe


def labeled_train_subset(ds, labels_per_class=None, label_fraction=None, seed=0):
    """The labeled part of ``ds``, optionally reduced to N per class or a fraction, by seed."""
    idx = np.flatnonzero(ds.labels >= 0)
    if labels_per_class or label_fraction:
        sub = class_balanced_subset(ds.labels[idx], labels_per_class, label_fraction, seed,
                                    ds.classes)
        idx = idx[sub]
    return ds.subset(idx)


def evaluate_features(train_f, train_y, test_f, test_y, num_classes, kinds=("knn", "linear"),
                      knn_k=(200, 20), knn_temperature=0.1, val_fraction=0.2, seed=0) -> dict:
    out: dict = {}
    if "knn" in kinds:
        for k in knn_k:
            out.update(knn_accuracy(train_f, train_y, test_f, test_y, num_classes, k,
                                    knn_temperature))
    if "linear" in kinds:
        out.update(linear_probe(train_f, train_y, test_f, test_y, val_fraction, seed=seed))
    out.update(collapse_metrics(test_f))
    return out


def evaluate_encoder(encoder, train_ds, test_ds, kinds=("knn", "linear"), knn_k=(200, 20),
                     knn_temperature=0.1, val_fraction=0.2, seed=0, device="cpu",
                     batch_size=512, channels_last=True) -> dict:
    ftr = extract_features(encoder, train_ds, batch_size, device, channels_last=channels_last)
    fte = extract_features(encoder, test_ds, batch_size, device, channels_last=channels_last)
    res = evaluate_features(ftr, train_ds.labels, fte, test_ds.labels, len(train_ds.classes),
                            kinds, knn_k, knn_temperature, val_fraction, seed)
    res.update({"n_train": len(train_ds), "n_test": len(test_ds)})
    return res


def raw_pixel_features(ds) -> np.ndarray:
    """Flattened pixels in [0, 1]: the no-learning baseline."""
    return ds.images.reshape(len(ds), -1).astype(np.float32) / 255.0


def label_sweep(encoder, train_ds, test_ds, per_class=(1, 5, 10), fractions=(0.01, 0.1),
                seeds=(0, 1), knn_k=20, knn_temperature=0.1, device="cpu") -> list[dict]:
    """The label-fraction protocol: kNN and linear-probe accuracy on ``test_ds`` when only N
    labels per class, or a fraction of each class, of ``train_ds`` are known, for each seed
    (class-balanced subsets chosen by seed). Features are extracted once. Rows:
    {"labels": "10/class" | "1%", "seed", "n_labels", "knn{k}_acc", "linear_acc"}."""
    ftr = extract_features(encoder, train_ds, device=device)
    fte = extract_features(encoder, test_ds, device=device)
    labeled = np.flatnonzero(train_ds.labels >= 0)
    counts = np.bincount(train_ds.labels[labeled])
    settings = [(f"{k}/class", {"per_class": k}) for k in per_class if k <= counts.min()]
    settings += [(f"{f:g}" if f >= 1 else f"{100 * f:g}%", {"fraction": f}) for f in fractions]
    rows = []
    for name, kw in settings:
        for seed in seeds:
            sub = labeled[class_balanced_subset(train_ds.labels[labeled], seed=seed, **kw)]
            k = min(knn_k, len(sub))
            res = evaluate_features(ftr[sub], train_ds.labels[sub], fte, test_ds.labels,
                                    len(train_ds.classes), knn_k=(k,),
                                    knn_temperature=knn_temperature,
                                    val_fraction=0.2 if len(sub) >= 5 * len(counts) else 0.0,
                                    seed=seed)
            rows.append({"labels": name, "seed": seed, "n_labels": int(len(sub)),
                         f"knn{k}_acc": res[f"knn{k}_acc"], "knn_acc": res[f"knn{k}_acc"],
                         "linear_acc": res["linear_acc"]})
    return rows
