"""Semantic segmentation scores: the confusion matrix over pixels and mean intersection over union.

IoU of class c = TP / (TP + FP + FN) over all pixels of the evaluation set (not per image);
mIoU averages it over the classes that occur in the ground truth or the prediction (a class absent
from both is left out, as in the usual benchmark code). Pixels labelled ``ignore_index`` count
nowhere.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """[K, K] int64 counts, rows the true class, columns the predicted one."""
    pred = torch.as_tensor(pred).reshape(-1).long()
    target = torch.as_tensor(target).reshape(-1).long()
    keep = target != ignore_index
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).numpy().astype(np.int64)


def iou_scores(conf: np.ndarray) -> dict:
    """{'miou', 'iou' (per class, NaN where the class is absent from truth and prediction),
    'pixel_accuracy'} from a confusion matrix."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"miou": float(np.nanmean(iou)), "iou": [float(v) for v in iou],
            "pixel_accuracy": float(tp.sum() / max(conf.sum(), 1))}
